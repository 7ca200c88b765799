"""The one record type that flows between stages. A field keeps its name from the reader to the
parquet: `caption_rewrite` here is `caption_rewrite` in the record and the parquet column."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

PENDING, KEPT, REJECTED, ERROR = "pending", "kept", "rejected", "error"


@dataclass
class Generation:
    """What the rewrite stage did for this sample (the stage's settings are in the run context)."""

    rendered_prompt_sha256: Optional[str] = None
    seed: Optional[int] = None
    caption_truncated: bool = False  # the original caption was cut to limits.max_caption_chars
    new_tokens: Optional[int] = None
    retries: int = 0  # engine requests repeated (openai: connection errors, 408, 429, 5xx)
    guards: list[str] = field(default_factory=list)  # what the text guards did (stages/guards.py)
    stripped: list[str] = field(default_factory=list)  # the text they removed
    guard_problem: Optional[str] = None  # the guard that made the rewrite unusable
    # best of n (generation.n > 1): every candidate {text, seed, new_tokens, guards, stripped, problem, clip}
    candidates: list[dict] = field(default_factory=list)
    # generation.captions: name -> {text, prompt_id, prompt_sha256, seed, new_tokens, clip}
    captions: dict[str, dict] = field(default_factory=dict)


@dataclass
class Repair:
    """Sentence repair (policy.repair): the rewrite without its failing sentences."""

    text: Optional[str] = None  # the repaired rewrite; None when nothing was dropped
    dropped: list[dict] = field(default_factory=list)  # {"sentence", "cosine"} in rewrite order
    problem: Optional[str] = None  # low_clip_sentences: fewer than min_sentences would remain


@dataclass
class Decision:
    """What the policy decided for this sample, beyond status and reason."""

    outcome: Optional[str] = None  # which caption was kept: rewrite | original | dry_run
    rewrite_problem: Optional[str] = None  # why the rewrite was unusable when the original was too
    mix_draw: Optional[float] = None  # policy mix: the seeded draw
    orig_passed: Optional[bool] = None  # clip_orig >= min_clip_orig; None when unscored
    write_orig: bool = False  # write the original caption beside the training caption (policy `both`)


@dataclass
class Sample:
    key: str  # the output key (dots sanitised)
    shard: str  # the input shard url
    source_key: Optional[str] = None  # the key in the input shard; None when equal to `key`
    members: list[str] = field(default_factory=list)
    image_bytes: Optional[bytes] = None
    image_sha256: Optional[str] = None  # of image_bytes, hashed beside decoding (decode threads)
    image_ext: Optional[str] = None
    image_real_ext: Optional[str] = None  # what the bytes are, read from their header when decoded
    image_altered: Optional[bool] = None  # decoding changed the pixels (EXIF turn, alpha, 16 bits): shards/decode.altered
    image: Any = None  # decoded PIL image; transient, never written
    prepared: dict = field(default_factory=dict, repr=False)  # stages' model inputs made ahead (prepare); transient
    image_reencoded_to: Optional[str] = None  # output.normalize_image_format re-encoded the image
    encoded: Optional[bytes] = field(default=None, repr=False)  # that re-encode, made ahead on the host threads; transient
    caption_orig: Optional[str] = None
    orig_json: Optional[str] = None  # the original json member, verbatim text
    caption_rewrite: Optional[str] = None
    caption: Optional[str] = None  # the training caption, once kept
    scores: dict[str, Any] = field(default_factory=dict)
    status: str = PENDING
    reason: Optional[str] = None
    error_detail: Optional[str] = None
    generation: Generation = field(default_factory=Generation)
    decision: Decision = field(default_factory=Decision)
    repair: Repair = field(default_factory=Repair)

    @property
    def active(self) -> bool:
        """Still being processed: not yet rejected or failed."""
        return self.status == PENDING

    def fail(self, reason: str, detail: str = "") -> None:
        self.status, self.reason = ERROR, reason
        if detail:
            self.error_detail = detail[:500]

    def reject(self, reason: str) -> None:
        self.status, self.reason = REJECTED, reason

    def keep(self, caption: str, outcome: str, note: Optional[str] = None) -> None:
        """Keep the sample with `caption` as its training caption; `note` says why, if not the rewrite."""
        self.status, self.caption = KEPT, caption
        self.decision.outcome, self.reason = outcome, note
