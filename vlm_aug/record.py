"""The per-sample provenance record (schema `vlm_aug.sample/1`, shipped as `schema/sample.schema.json`),
the run context it cites, and the parquet row built from it by the schema's one column list."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any, Optional

import orjson
import pyarrow as pa

from vlm_aug import SCHEMA_VERSION, __version__
from vlm_aug.config import ConfigError, settings_for_engine
from vlm_aug.paths import PACKAGE_DIR
from vlm_aug.sample import Sample


def git_sha() -> Optional[str]:
    """The commit of vlm_aug's checkout, None outside one. Read once per run, where the run starts
    (RunContext): cached per process, a long-lived process cited a commit minutes old, and a Ray actor
    (a new process) read HEAD again, so one run's records could cite two commits."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


PACKAGES = ("vlm-aug", "torch", "transformers", "open_clip_torch", "webdataset", "ray", "pyarrow", "pillow")


def package_versions() -> dict:
    """The installed versions of what makes the output (the manifest's `versions`, and each Ray actor's)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def fingerprint(settings: dict) -> str:
    """Of the settings that decide the samples' content (`vlm_aug.resume.run_settings`)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class EngineChanged(ConfigError):
    """`vlm.engine: auto` picked another engine here than the one the output's shards were made with."""


STAGE_SECTIONS = ("generation", "scoring", "decision")  # record sections that stages describe
SCHEMA_PATH = PACKAGE_DIR / "schema" / "sample.schema.json"


@dataclass
class RunContext:
    """What every record of a run shares: stage descriptions and pipeline identity."""

    config_sha256: str
    run_id: str = field(default_factory=new_run_id)
    # record section -> what the stage that fills it describes (model, revision, params)
    sections: dict = field(default_factory=lambda: {name: {} for name in STAGE_SECTIONS})
    models: dict = field(default_factory=dict)  # stage name -> its description, for the manifest
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    fingerprint: str = ""  # of the settings that decide the samples' content (vlm_aug.resume)
    settings: dict = field(default_factory=dict)  # those settings; `vlm.engine: auto` until a worker picks
    # vlm.engine auto: the fingerprints the output's complete shards have (empty: anything goes)
    held: tuple = ()
    leased: bool = False  # the run holds the output's lease (run.execute), so its folder exists: one gone was removed
    git_sha: Optional[str] = field(default_factory=git_sha)  # the driver's, shipped with the context to workers

    def settle_engine(self, engine: Optional[str]) -> None:
        """In the worker, once its stages are set up: with `vlm.engine: auto` the settings and fingerprint
        become those of the engine it picked (an explicit `vlm.engine: ENGINE` gives the same), and a pick
        that differs from the engine of the output's complete shards is refused before any shard."""
        resolved = settings_for_engine(self.settings, engine)
        if resolved is self.settings:
            return
        self.settings, self.fingerprint = resolved, fingerprint(resolved)
        if self.held and self.fingerprint not in self.held:
            raise EngineChanged(
                f"vlm.engine: auto picked {engine!r} on {self.worker}, but the output's complete shards were made "
                "with another engine (their settings differ only in vlm.engine). Refusing to mix engines in one "
                "dataset without being told. Ways on:\n"
                "  --set vlm.engine=ENGINE     the engine of the complete shards (manifest.json: configurations)\n"
                "  --overwrite                 redo every shard with this engine\n"
                "  --output NEW_DIR            write this run somewhere else\n"
                "  --allow-config-change       append: each shard records its own settings")

    def describe_stages(self, stages: list) -> None:
        """Take each stage's description into the record section it fills (`stage.section`)."""
        for stage in stages:
            self.models[stage.name] = self.sections[stage.section] = stage.describe()

    def pipeline(self) -> dict:
        return {"version": __version__, "git_sha": self.git_sha, "config_sha256": self.config_sha256,
                "run_id": self.run_id, "worker": self.worker,
                "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _sentence_min(values: list[float]) -> Optional[float]:
    return min(values) if values else None


def build_record(sample: Sample, run: RunContext) -> dict[str, Any]:
    """The full history of one sample; the same fields for every sample, kept or not.
    Optional text fields are "" rather than null: loaders such as HF datasets infer a
    column's type from the first samples, and a null there breaks a later string."""
    g, d, s = sample.generation, sample.decision, sample.scores
    return {
        "schema": SCHEMA_VERSION,
        "key": sample.key,
        "status": sample.status,
        "reason": sample.reason or "",
        "caption": sample.caption,
        "caption_orig": sample.caption_orig,
        "caption_rewrite": sample.caption_rewrite,
        "source": {
            "shard": sample.shard, "key": sample.source_key or sample.key, "members": list(sample.members),
            "image_sha256": sample.image_sha256 or (hashlib.sha256(sample.image_bytes).hexdigest()
                                                    if sample.image_bytes else None),
            "image_ext": sample.image_ext, "orig_json": sample.orig_json,
            "error_detail": sample.error_detail or "", "image_reencoded_to": sample.image_reencoded_to or "",
        },
        "generation": {**run.sections["generation"], "rendered_prompt_sha256": g.rendered_prompt_sha256,
                       "seed": g.seed, "caption_truncated": g.caption_truncated, "new_tokens": g.new_tokens,
                       "retries": g.retries, "guards": list(g.guards), "stripped": list(g.stripped),
                       "candidates": [dict(c) for c in g.candidates],
                       "captions": {name: dict(c) for name, c in g.captions.items()}},
        "scoring": {**run.sections["scoring"], "clip_orig": s.get("clip_orig"), "clip_rewrite": s.get("clip_rewrite"),
                    "clip_sentences": list(s.get("clip_sentences", [])),
                    "clip_sentence_min": _sentence_min(s.get("clip_sentences", [])),
                    "clip_repaired": s.get("clip_repaired")},
        "decision": {**run.sections["decision"], "outcome": d.outcome if sample.status == "kept" else sample.status,
                     "reason": sample.reason or "", "rewrite_problem": d.rewrite_problem or "",
                     "mix_draw": d.mix_draw, "orig_passed": d.orig_passed,
                     "repair": {"dropped": list(sample.repair.dropped), "text": sample.repair.text}},
        "pipeline": run.pipeline(),
    }


@lru_cache(maxsize=1)
def sample_schema() -> dict:
    """The JSON Schema of the record, with `x-parquet-columns`: the parquet sidecar's columns."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # arrow type as printed by pyarrow ("string", "double", "list<item: double>", ...)
    path: Optional[tuple[str, ...]]  # where in the record the value is; None: the record itself as JSON
    description: str
    empty_as_null: bool = False

    def value(self, record: dict, record_json: str):
        if self.path is None:
            return record_json
        value = record
        for part in self.path:
            value = value[part]
        return None if self.empty_as_null and value == "" else value


ARROW_TYPES = {"string": pa.string(), "double": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(),
               "list<item: double>": pa.list_(pa.float64())}
COLUMNS = tuple(Column(c["name"], c["type"], tuple(c["from"].split(".")) if c["from"] else None,
                       c["description"], c.get("empty_as_null", False))
                for c in sample_schema()["x-parquet-columns"])
PARQUET_SCHEMA = pa.schema([(c.name, ARROW_TYPES[c.type]) for c in COLUMNS])


def record_json(record: dict) -> bytes:
    """The record as the sample's json member: UTF-8, keys sorted, so the same record gives the same bytes.
    orjson: compact separators; a NaN or infinity becomes null (valid JSON, unlike `json.dumps`'s NaN)."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def parquet_row(record: dict, record_json: str) -> dict:
    return {c.name: c.value(record, record_json) for c in COLUMNS}
