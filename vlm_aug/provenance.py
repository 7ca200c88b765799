"""The per-sample provenance record (fixed schema, versioned) and the run context it cites."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional

import pyarrow as pa

from vlm_aug import SCHEMA_VERSION, __version__
from vlm_aug.paths import PACKAGE_DIR
from vlm_aug.sample import Sample


@lru_cache(maxsize=1)
def git_sha() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


@dataclass
class RunContext:
    """What every record of a run shares: stage descriptions and pipeline identity."""

    config_sha256: str
    run_id: str = field(default_factory=new_run_id)
    generation: dict = field(default_factory=dict)
    scoring: dict = field(default_factory=dict)
    decision: dict = field(default_factory=dict)
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def pipeline(self) -> dict:
        return {"version": __version__, "git_sha": git_sha(), "config_sha256": self.config_sha256,
                "run_id": self.run_id, "worker": self.worker,
                "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _sentence_min(values: list[float]) -> Optional[float]:
    return min(values) if values else None


def build_record(sample: Sample, run: RunContext) -> dict[str, Any]:
    """The full history of one sample; the same fields for every sample, kept or not.
    Optional text fields are "" rather than null: loaders such as HF datasets infer a
    column's type from the first samples, and a null there breaks a later string."""
    f, s = sample.flags, sample.scores
    outcome = f.get("outcome") if sample.status == "kept" else sample.status
    return {
        "schema": SCHEMA_VERSION,
        "key": sample.key,
        "status": sample.status,
        "reason": sample.reason or "",
        "caption": sample.caption_final,
        "caption_orig": sample.caption_orig,
        "caption_rewrite": sample.caption_new,
        "source": {
            "shard": sample.shard, "key": f.get("orig_key", sample.key), "members": list(sample.members),
            "image_sha256": hashlib.sha256(sample.image_bytes).hexdigest() if sample.image_bytes else None,
            "image_ext": sample.image_ext, "orig_json": sample.meta_orig,
            "error_detail": f.get("error_detail") or "", "image_reencoded_to": f.get("image_reencoded_to") or "",
        },
        "generation": {**run.generation, "rendered_prompt_sha256": f.get("rendered_prompt_sha256"),
                       "seed": f.get("seed"), "caption_truncated": bool(f.get("caption_truncated", False)),
                       "new_tokens": f.get("new_tokens")},
        "scoring": {**run.scoring, "clip_orig": s.get("clip_orig"), "clip_rewrite": s.get("clip_rewrite"),
                    "clip_sentences": list(s.get("clip_sentences", [])),
                    "clip_sentence_min": _sentence_min(s.get("clip_sentences", []))},
        "decision": {**run.decision, "outcome": outcome, "reason": sample.reason or "",
                     "rewrite_problem": f.get("rewrite_problem") or "", "mix_draw": f.get("mix_draw"),
                     "orig_passed": f.get("orig_passed")},
        "pipeline": run.pipeline(),
    }


PARQUET_SCHEMA = pa.schema([
    ("key", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("outcome", pa.string()),
    ("caption", pa.string()), ("caption_orig", pa.string()), ("caption_rewrite", pa.string()),
    ("clip_orig", pa.float64()), ("clip_rewrite", pa.float64()), ("clip_sentence_min", pa.float64()),
    ("clip_sentences", pa.list_(pa.float64())), ("shard", pa.string()), ("source_key", pa.string()),
    ("image_sha256", pa.string()), ("seed", pa.int64()), ("caption_truncated", pa.bool_()),
    ("orig_passed", pa.bool_()),
    ("run_id", pa.string()), ("provenance", pa.string()),
])


def parquet_row(record: dict, record_json: str) -> dict:
    src, gen, sc, dec = record["source"], record["generation"], record["scoring"], record["decision"]
    return {
        "key": record["key"], "status": record["status"], "reason": record["reason"] or None,
        "outcome": dec["outcome"],
        "caption": record["caption"], "caption_orig": record["caption_orig"],
        "caption_rewrite": record["caption_rewrite"], "clip_orig": sc["clip_orig"],
        "clip_rewrite": sc["clip_rewrite"], "clip_sentence_min": sc["clip_sentence_min"],
        "clip_sentences": sc["clip_sentences"], "shard": src["shard"], "source_key": src["key"],
        "image_sha256": src["image_sha256"], "seed": gen["seed"], "caption_truncated": gen["caption_truncated"],
        "orig_passed": dec["orig_passed"],
        "run_id": record["pipeline"]["run_id"], "provenance": record_json,
    }


