"""Output shards: one tar + one parquet + one stats json per input shard, committed
so that a reader never sees a half shard. The stats file is written last and is
the completion marker."""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Optional

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from vlm_aug import SCHEMA_VERSION
from vlm_aug.provenance import PARQUET_SCHEMA, RunContext, build_record, parquet_row
from vlm_aug.sample import KEPT, Sample

ORIG_CAPTION_EXT = "orig.txt"  # policy `both`: the original caption beside the training caption


def shard_paths(out_root: str, name: str) -> dict[str, str]:
    base = f"{out_root.rstrip('/')}/shards/{name}"
    return {"tar": f"{base}.tar", "parquet": f"{base}.parquet", "stats": f"{base}.stats.json"}


def is_complete(out_root: str, name: str) -> bool:
    fs, _ = fsspec.core.url_to_fs(out_root)
    paths = shard_paths(out_root, name)
    return all(fs.exists(fsspec.core.url_to_fs(p)[1]) for p in paths.values())


def committed_stats(out_root: str, name: str, run_id: str) -> dict | None:
    """The stats of shard `name` if this run (`run_id`) committed it, else None. The stats file is
    written last, so its presence with our run id means the tar and parquet are complete too."""
    if not is_complete(out_root, name):
        return None
    fs, _ = fsspec.core.url_to_fs(out_root)
    try:
        with fs.open(fsspec.core.url_to_fs(shard_paths(out_root, name)["stats"])[1], "rb") as handle:
            stats = json.load(handle)
    except (OSError, ValueError):
        return None
    return stats if stats.get("run_id") == run_id else None


def check_writable(out_root: str) -> None:
    """Fail before any model loads if the output cannot be written."""
    fs, root = fsspec.core.url_to_fs(out_root)
    probe = f"{root.rstrip('/')}/shards/.write-probe"
    try:
        fs.makedirs(f"{root.rstrip('/')}/shards", exist_ok=True)
        with fs.open(probe, "wb") as handle:
            handle.write(b"ok")
        fs.rm(probe)
    except OSError as exc:
        raise OutputUnwritable(f"cannot write to output {out_root!r}: {exc.strerror or exc}; "
                               "choose another --output or fix its permissions / free space") from None


class OutputUnwritable(OSError):
    """The output location refuses writes (read-only, full, no permission)."""


def _reencode(data: bytes, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.save(buffer, format="JPEG" if fmt == "jpg" else "PNG", quality=95)
    return buffer.getvalue()


class ShardWriter:
    def __init__(self, out_root: str, name: str, run: RunContext, write_orig: bool = False,
                 normalize_image_format: Optional[str] = None):
        self.fs, _ = fsspec.core.url_to_fs(out_root)
        self.name, self.run = name, run
        self.final = {k: fsspec.core.url_to_fs(v)[1] for k, v in shard_paths(out_root, name).items()}
        self.tmp = {k: f"{v}.tmp-{run.run_id}" for k, v in self.final.items()}
        self.fs.makedirs(self.final["tar"].rsplit("/", 1)[0], exist_ok=True)
        for stale in self.fs.glob(f"{self.final['tar'].rsplit('.', 1)[0]}.*.tmp-*"):
            self.fs.rm(stale)  # left by a killed run; one run per output directory at a time
        self.write_orig, self.normalize = write_orig, normalize_image_format
        self.handle = self.fs.open(self.tmp["tar"], "wb")
        self.tar = wds.TarWriter(self.handle, encoder=False, mtime=0)
        self.rows: list[dict] = []
        self.counts, self.reasons = Counter(inputs=0, kept=0, rejected=0, error=0), Counter()
        self.score_sums = Counter()

    def add(self, sample: Sample) -> None:
        if sample.status == KEPT:
            image_ext, image = sample.image_ext, sample.image_bytes
            if self.normalize and image_ext != self.normalize:
                image, image_ext = _reencode(image, self.normalize), self.normalize
                sample.flags["image_reencoded_to"] = image_ext
        record = build_record(sample, self.run)
        record_json = json.dumps(record, ensure_ascii=False, sort_keys=True)
        if sample.status == KEPT:
            member = {"__key__": sample.key, image_ext: image, "txt": sample.caption_final.encode("utf-8"),
                      "json": record_json.encode("utf-8")}
            if self.write_orig:
                member[ORIG_CAPTION_EXT] = sample.caption_orig.encode("utf-8")
            self.tar.write(member)
        self.rows.append(parquet_row(record, record_json))
        self.counts["inputs"] += 1
        self.counts[sample.status] += 1
        if sample.reason:
            self.reasons[f"{sample.status}:{sample.reason}"] += 1
        for name in ("clip_orig", "clip_rewrite"):
            if sample.scores.get(name) is not None:
                self.score_sums[f"{name}_sum"] += sample.scores[name]
                self.score_sums[f"{name}_n"] += 1
        self.score_sums["new_tokens"] += sample.flags.get("new_tokens") or 0
        if sample.status == KEPT and sample.flags.get("orig_passed") is False:
            self.score_sums["corrected"] += 1  # kept with a rewrite; CLIP judged the original wrong

    def commit(self, read_error: Optional[str], ignored_members: int, timings: dict) -> dict:
        self.tar.close()
        self.handle.close()
        with self.fs.open(self.tmp["parquet"], "wb") as handle:
            pq.write_table(pa.Table.from_pylist(self.rows, schema=PARQUET_SCHEMA), handle)
        stats = {"schema": SCHEMA_VERSION, "shard": self.name, "counts": dict(self.counts),
                 "reasons": dict(sorted(self.reasons.items())), "read_error": read_error,
                 "ignored_members": ignored_members, "scores": dict(self.score_sums), "run_id": self.run.run_id,
                 "timings_s": {k: round(v, 4) for k, v in timings.items()}}
        c = stats["counts"]
        if c["inputs"] != c["kept"] + c["rejected"] + c["error"]:
            raise AssertionError(f"shard {self.name}: count invariant broken: {c}")
        with self.fs.open(self.tmp["stats"], "w") as handle:
            json.dump(stats, handle, indent=1)
        for kind in ("tar", "parquet", "stats"):  # stats last: it marks the shard done
            self.fs.mv(self.tmp[kind], self.final[kind])
        return stats

    def abort(self) -> None:
        for closer in (self.tar.close, self.handle.close):
            try:
                closer()
            except Exception:
                pass
        for path in self.tmp.values():
            if self.fs.exists(path):
                self.fs.rm(path)
