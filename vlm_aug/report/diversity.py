"""Diversity and quality figures of a caption set, before vs after the rewrite. Pure Python.

Definitions (also stated on the report page):
- words: lower-cased runs of letters/digits (an inner apostrophe kept), see `words`;
- vocabulary: distinct words over the whole set;
- type-token ratio (TTR): mean over captions of distinct words / words, so it
  measures repetition *inside* a caption (a rewrite that loops scores low);
- distinct-n: distinct n-grams / all n-grams over the whole set (n-grams never
  cross captions), so it measures variety *across* captions;
- added words: words of the rewrite that are not words of its original caption;
  the list of most frequent ones leaves out English function words (STOPWORDS).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Optional

WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_SPACE = re.compile(r"\s+")
STOPWORDS = frozenset(
    "a an the and or but of in on at to for with from by as is are was were be been it its this that these "
    "those there here which who whom whose what while into onto over under near next up down out off "
    "than then so too very can has have had do does did not no".split())


def words(text: Optional[str]) -> list[str]:
    """Lower-cased words of `text` (punctuation dropped); [] for None."""
    return WORD_RE.findall(text.lower()) if text else []


def normalize(text: Optional[str]) -> str:
    """Text for equality tests: lower case, single spaces, no edge punctuation."""
    return _SPACE.sub(" ", (text or "").lower()).strip(" \t\n.,;:!?\"'")


def added_words(original: Optional[str], rewrite: Optional[str]) -> list[str]:
    """Words of `rewrite` absent from `original`, in rewrite order, with repeats."""
    known = set(words(original))
    return [w for w in words(rewrite) if w not in known]


def percentile(sorted_values: list[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


class CaptionSetStats:
    """Streaming vocabulary, TTR, distinct-1/2 and word-length figures of one caption set."""

    def __init__(self) -> None:
        self.unigrams: Counter = Counter()
        self.bigrams: set = set()
        self.n_bigrams = 0
        self.lengths: list[int] = []
        self.ttr_sum = 0.0

    def add(self, text: Optional[str], tokens: Optional[list[str]] = None) -> None:
        """Count one caption; pass `tokens` (= words(text)) when already computed."""
        tokens = words(text) if tokens is None else tokens
        self.lengths.append(len(tokens))
        if not tokens:
            return
        self.unigrams.update(tokens)
        self.ttr_sum += len(set(tokens)) / len(tokens)
        pairs = list(zip(tokens, tokens[1:]))
        self.bigrams.update(pairs)
        self.n_bigrams += len(pairs)

    def result(self) -> dict:
        n_tokens = sum(self.unigrams.values())
        nonempty = sum(1 for n in self.lengths if n)
        lengths = sorted(self.lengths)
        return {
            "captions": len(self.lengths),
            "words": n_tokens,
            "vocabulary": len(self.unigrams),
            "ttr": self.ttr_sum / nonempty if nonempty else None,
            "distinct_1": len(self.unigrams) / n_tokens if n_tokens else None,
            "distinct_2": len(self.bigrams) / self.n_bigrams if self.n_bigrams else None,
            "mean_words": sum(lengths) / len(lengths) if lengths else None,
            "p10_words": percentile(lengths, 10),
            "p50_words": percentile(lengths, 50),
            "p90_words": percentile(lengths, 90),
        }


class RewriteStats:
    """Streaming figures that compare each rewrite with its own original and image."""

    def __init__(self, top_n: int = 20) -> None:
        self.top_n = top_n
        self.pairs = self.identical = self.contains = 0
        self.added_df: Counter = Counter()  # in how many rewrites each added word occurs
        self.by_text: dict[bytes, list] = {}  # text digest -> [samples, up to two distinct image ids]

    def add(self, original: Optional[str], rewrite: Optional[str], image_id: Optional[str],
            orig_words: Optional[list[str]] = None, new_words: Optional[list[str]] = None) -> None:
        """Count one rewrite; pass the words of both texts when already computed."""
        if not rewrite:
            return
        self.pairs += 1
        orig_n, new_n = normalize(original), normalize(rewrite)
        self.identical += bool(orig_n) and orig_n == new_n
        self.contains += bool(orig_n) and orig_n in new_n
        orig_words = words(original) if orig_words is None else orig_words
        new_words = words(rewrite) if new_words is None else new_words
        self.added_df.update(set(new_words) - set(orig_words) - STOPWORDS)
        # near-duplicate: the same words in the same order, whatever the case and punctuation
        digest = hashlib.blake2b(" ".join(new_words).encode(), digest_size=12).digest()
        entry = self.by_text.setdefault(digest, [0, set()])
        entry[0] += 1
        if len(entry[1]) < 2:  # two distinct images are enough to call the text a near-duplicate
            entry[1].add(image_id if image_id is not None else f"unknown-{self.pairs}")

    def result(self) -> dict:
        shared = [n for n, images in self.by_text.values() if len(images) > 1]
        return {
            "rewrites": self.pairs,
            "identical_to_original": self.identical,
            "contains_original": self.contains,
            "identical_share": self.identical / self.pairs if self.pairs else None,
            "contains_share": self.contains / self.pairs if self.pairs else None,
            "top_added_words": sorted(self.added_df.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_n],
            "duplicate_texts": len(shared),
            "duplicate_samples": sum(shared),
        }

