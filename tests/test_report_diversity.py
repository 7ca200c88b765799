"""Diversity and quality figures on caption sets whose values are worked out by hand."""

import pytest

from vlm_aug.report.diversity import (
    CaptionSetStats, RewriteStats, added_words, normalize, percentile, words,
)


def test_words_lowercases_and_drops_punctuation_but_keeps_inner_apostrophes():
    assert words("A red Square, isn't it? 2 cats_dogs!") == ["a", "red", "square", "isn't", "it", "2", "cats", "dogs"]
    assert words("Ça coûte 5 €.") == ["ça", "coûte", "5"]
    assert words(None) == [] and words("") == [] and words("...") == []


def test_added_words_are_the_rewrite_words_missing_from_the_original():
    assert added_words("a red square", "A large red square on a white table.") == ["large", "on", "white", "table"]
    assert added_words("a red square", "a red square") == []
    assert added_words(None, "red") == ["red"]
    assert added_words("anything", None) == []


def test_percentile_interpolates_linearly():
    assert percentile([], 50) is None
    assert percentile([7], 90) == 7
    assert percentile([0, 10], 50) == 5
    assert percentile([1, 2, 3, 4, 5], 10) == pytest.approx(1.4)
    assert percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)


def test_caption_set_figures():
    stats = CaptionSetStats()
    for text in ["a red square", "a red red square", "", "blue"]:
        stats.add(text)
    r = stats.result()
    # words: 3 + 4 + 0 + 1 = 8; vocabulary {a, red, square, blue} = 4
    assert r["captions"] == 4 and r["words"] == 8 and r["vocabulary"] == 4
    assert r["distinct_1"] == pytest.approx(4 / 8)
    # bigrams: (a red)(red square) + (a red)(red red)(red square) = 5, distinct 3
    assert r["distinct_2"] == pytest.approx(3 / 5)
    # per-caption TTR over the non-empty captions: 3/3, 3/4, 1/1
    assert r["ttr"] == pytest.approx((1 + 0.75 + 1) / 3)
    assert r["mean_words"] == pytest.approx(2.0)
    assert r["p50_words"] == pytest.approx(2.0)  # lengths sorted 0 1 3 4
    assert r["p10_words"] == pytest.approx(0.3) and r["p90_words"] == pytest.approx(3.7)


def test_empty_caption_set_has_no_ratios():
    r = CaptionSetStats().result()
    assert r["captions"] == 0 and r["ttr"] is None and r["distinct_1"] is None and r["mean_words"] is None


def test_rewrite_figures_verbatim_added_words_and_near_duplicates():
    stats = RewriteStats(top_n=3)
    stats.add("a red square", "A red square.", "img1")  # identical after normalization
    stats.add("a blue circle", "A blue circle on green grass.", "img2")  # contains the original
    stats.add("a dog", "A small dog on grass", "img3")
    stats.add("a cat", "a small dog on grass!", "img4")  # same words as img3's rewrite, other image
    stats.add("a cat", "A small dog, on grass", "img3")  # same text again, but the same image as before
    stats.add("a cat", None, "img5")  # no rewrite: not counted
    r = stats.result()
    assert r["rewrites"] == 5
    assert r["identical_to_original"] == 1 and r["identical_share"] == pytest.approx(1 / 5)
    assert r["contains_original"] == 2
    # added in how many rewrites: grass 4, small 3, dog 2 (not for img3: its original says dog), green 1;
    # "on" (4) is a function word and left out of the list
    assert r["top_added_words"] == [("grass", 4), ("small", 3), ("dog", 2)]
    # one text ("a small dog on grass") describes two different images; three samples carry it
    assert r["duplicate_texts"] == 1 and r["duplicate_samples"] == 3


def test_same_rewrite_for_the_same_image_is_not_a_near_duplicate():
    stats = RewriteStats()
    stats.add("x", "the same words", "img1")
    stats.add("x", "The same words.", "img1")
    assert stats.result()["duplicate_texts"] == 0


def test_normalize_ignores_case_spacing_and_edge_punctuation():
    assert normalize("  A  red\nsquare. ") == "a red square"
    assert normalize(None) == ""
