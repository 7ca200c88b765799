"""Sentence repair (policy.repair) with the scene world's real CLIP: planted wrong sentences are dropped,
the rest is re-scored and kept as `repaired`; the record, stats, card and report show what was struck."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from vlm_aug.cli import main
from vlm_aug.config import CLIPConfig, PolicyConfig, RepairConfig
from vlm_aug.lab.scenes.shards import make_sample, write_scene_shards
from vlm_aug.lab.scenes.world import plant_wrong_sentence
from vlm_aug.record import RunContext, build_record
from vlm_aug.sample import Sample
from vlm_aug.stages.decide import DecideStage
from vlm_aug.stages.score import ScoreStage
from vlm_aug.text import join_sentences, split_sentences

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scored_with_planted_errors():
    """48 multi-object scenes whose rewrite is the truth with one sentence replaced by a wrong one."""
    rng = random.Random(31)
    samples, planted = [], []
    while len(samples) < 48:
        scene_sample = make_sample(rng)
        if len(scene_sample.scene.objects) < 2:
            continue
        sentences, wrong_index = plant_wrong_sentence(scene_sample.scene, rng)
        s = Sample(key=f"k{len(samples)}", shard="planted.tar", caption_orig=scene_sample.terse)
        s.image, s.caption_rewrite = scene_sample.image, " ".join(sentences)
        samples.append(s)
        planted.append(sentences[wrong_index])
    stage = ScoreStage(CLIPConfig(model="vlm_aug:scene_clip", pretrained=None, device="cpu"),
                       RepairConfig(drop_sentences_below=0.5))
    stage.setup()
    stage.process_batch(samples)
    return samples, planted


def test_planted_wrong_sentences_are_dropped_and_the_rest_rescored(scored_with_planted_errors):
    samples, planted = scored_with_planted_errors
    caught = 0
    for sample, wrong in zip(samples, planted):
        dropped = [d["sentence"] for d in sample.repair.dropped]
        caught += wrong in dropped
        for d in sample.repair.dropped:
            assert d["cosine"] < 0.5
        if sample.repair.text:
            assert sample.repair.text == " ".join(s for s in split_sentences(sample.caption_rewrite) if s not in dropped)
            assert sample.scores["clip_repaired"] is not None
    assert caught >= 0.8 * len(samples), f"{caught} of {len(samples)} planted sentences dropped"
    # re-scored: clip_repaired is the scene CLIP's own cosine of the repaired text with the image
    stage = ScoreStage(CLIPConfig(model="vlm_aug:scene_clip", pretrained=None, device="cpu"))
    stage.setup()
    repaired_texts = [s for s in samples if s.repair.text and s.repair.dropped]
    assert repaired_texts
    for sample in repaired_texts:  # the model itself, outside the stage's batching
        with torch.no_grad():
            image = stage.model.encode_image(stage.preprocess(sample.image)[None], normalize=True)
            text = stage.model.encode_text(stage.tokenizer([sample.repair.text]), normalize=True)
        assert sample.scores["clip_repaired"] == pytest.approx((text @ image.T).item(), abs=1e-5), sample.key
    assert any(abs(s.scores["clip_repaired"] - s.scores["clip_rewrite"]) > 1e-3 for s in repaired_texts)
    decide = DecideStage(PolicyConfig(name="rewrite", min_clip_rewrite=0.5, repair=RepairConfig(drop_sentences_below=0.5)))
    decide.process_batch(samples)
    repaired = [s for s in samples if s.decision.outcome == "repaired"]
    assert repaired and all(s.caption == s.repair.text for s in repaired)
    record = build_record(repaired[0], _context())
    assert record["decision"]["outcome"] == "repaired" and record["decision"]["repair"]["dropped"]
    assert record["scoring"]["clip_repaired"] == repaired[0].scores["clip_repaired"]


def _context() -> RunContext:
    return RunContext(config_sha256="0" * 64, run_id="test", sections={"generation": {}, "scoring": {}, "decision": {}})


def test_too_few_sentences_left_is_a_reason(scored_with_planted_errors):
    samples, _ = scored_with_planted_errors
    stage_samples = [Sample(key=s.key, shard=s.shard, caption_orig=s.caption_orig, image=s.image,
                            caption_rewrite=s.caption_rewrite) for s in samples if s.repair.dropped][:4]
    strict = ScoreStage(CLIPConfig(model="vlm_aug:scene_clip", pretrained=None, device="cpu"),
                        RepairConfig(drop_sentences_below=0.5, min_sentences=3))
    strict.setup()
    strict.process_batch(stage_samples)
    unrepairable = [s for s in stage_samples if s.repair.problem]
    assert unrepairable and all(s.repair.text is None for s in unrepairable)
    DecideStage(PolicyConfig(name="rewrite")).process_batch(unrepairable)
    assert {s.reason for s in unrepairable} == {"low_clip_sentences"}


def test_pipeline_counts_repairs_and_the_report_strikes_dropped_sentences(tmp_path, capsys):
    write_scene_shards(tmp_path / "in", 2, 32, seed=123, wrong_fraction=0.2)
    out = tmp_path / "out"
    # a high threshold: the shipped VLM's sentences are right, so this drops right ones, to exercise the path
    assert main(["run", str(REPO / "configs/demo.yaml"), "--input", str(tmp_path / "in/*.tar"), "--output", str(out),
                 "--no-progress", "--executor", "local", "--set", "report.semantic=false",
                 "--set", "policy.repair.drop_sentences_below=0.6"]) == 0
    import pyarrow.parquet as pq

    rows = [r for p in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    repaired = [json.loads(r["provenance"]) for r in rows if r["outcome"] == "repaired"]
    assert len(repaired) >= 5
    for record in repaired:
        assert record["caption"] == record["decision"]["repair"]["text"]
        assert all(d["cosine"] < 0.6 for d in record["decision"]["repair"]["dropped"])
        assert record["scoring"]["clip_repaired"] >= 0.5  # the demo's min_clip_rewrite, on the repaired text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["repaired"] == len(repaired)
    assert manifest["totals"]["sentences_dropped"] == sum(len(r["decision"]["repair"]["dropped"]) for r in repaired)
    assert "Sentence repair:" in (out / "README.md").read_text()
    page = (out / "report.html").read_text()
    assert '<option value="repaired">' in page and 'title="dropped by sentence repair"' in page
    # a repaired card shows, and sorts by, the score of its training caption (clip_repaired), not the
    # whole rewrite's, which may be under min_clip_rewrite on a kept card
    import re

    shown = re.findall(r'data-reason="repaired" data-views="[^"]*" data-key="([^"]+)" data-clip-rewrite="([^"]*)"', page)
    by_key = {r["key"]: r for r in repaired}
    assert shown and all(value == f'{by_key[key]["scoring"]["clip_repaired"]:.6f}' for key, value in shown)
    assert "&rarr; repaired <b>" in page
    assert "of the kept" in capsys.readouterr().out
    assert main(["stats", str(out)]) == 0
    assert (f"sentence repair: {len(repaired)} kept without their failing sentences, "
            f"{manifest['totals']['sentences_dropped']} sentences dropped") in capsys.readouterr().out


def test_a_repaired_text_under_min_clip_rewrite_says_so(scored_with_planted_errors):
    """The reason named `low_clip_rewrite`, a score that had passed, when it was the repaired text,
    scored as a whole, that fell under the threshold."""
    samples, _ = scored_with_planted_errors
    repaired = [s for s in samples if s.repair.text]
    threshold = sorted(s.scores["clip_repaired"] for s in repaired)[len(repaired) // 2]
    fresh = []
    for s in repaired:
        copy = Sample(key=s.key, shard=s.shard, caption_orig=s.caption_orig, caption_rewrite=s.caption_rewrite)
        copy.scores, copy.repair = dict(s.scores), s.repair
        fresh.append(copy)
    DecideStage(PolicyConfig(name="fallback", min_clip_orig=-1, min_clip_rewrite=threshold,
                             repair=RepairConfig(drop_sentences_below=0.5))).process_batch(fresh)
    under = [s for s in fresh if s.scores["clip_repaired"] < threshold]
    assert under and {(s.decision.outcome, s.reason) for s in under} == {("original", "low_clip_repaired")}
    assert all(s.decision.outcome == "repaired" for s in fresh if s.scores["clip_repaired"] >= threshold)


@pytest.mark.parametrize("text, sentences", [
    ("There are shapes, e.g. circles and squares. A red one.", ["There are shapes, e.g. circles and squares.", "A red one."]),
    ("Mr. Smith drew it. A book by J. R. R. Tolkien lies here.", ["Mr. Smith drew it.", "A book by J. R. R. Tolkien lies here."]),
    ("A U.S. flag is not visible. A dog sits.", ["A U.S. flag is not visible.", "A dog sits."]),
    ("1. A red circle. 2. A blue square.", ["1. A red circle.", "2. A blue square."]),
    ("A yellow circle vs. A yellow square. A red one.", ["A yellow circle vs. A yellow square.", "A red one."]),
    ("图中有一个红色的圆。图中有一个蓝色的方块。A small square.", ["图中有一个红色的圆。", "图中有一个蓝色的方块。", "A small square."]),
    ('A circle… It says "hello." A yellow circle!', ["A circle…", 'It says "hello."', "A yellow circle!"]),
    ("The rod is 3.5 m long. It is 2.0 m wide? Yes.", ["The rod is 3.5 m long.", "It is 2.0 m wide?", "Yes."]),
])
def test_sentences_are_split_where_they_end(text, sentences):
    """Each split sentence is scored and may be dropped: `e.g.`, initials, item numbers and `vs.` split
    sentences in two (repair kept half of one), and CJK text, `…` and `."` were never split."""
    assert split_sentences(text) == sentences
    assert join_sentences(sentences) == text
