"""Output shards: one tar + one parquet + one stats json per input shard, committed
so that a reader never sees a half shard. The stats file is written last and is
the completion marker."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections import Counter
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from vlm_aug import SCHEMA_VERSION
from vlm_aug.formats import CAPTION_EXT, META_EXT, ORIG_CAPTION_EXT
from vlm_aug.record import PARQUET_SCHEMA, RunContext, build_record, parquet_row, record_json
from vlm_aug.sample import KEPT, Sample
from vlm_aug.shards.images import output_image
from vlm_aug.shards.layout import LEASE_FILE, OutputDir, OutputUnwritable
from vlm_aug.shards.lease import OutputBusy


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    """Fixed metadata (mtime 0, mode 644, owner 0), so the same samples give the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    """Add one member to an open `tarfile` (the lab's shards); output shards use `TarMembers`."""
    tar.addfile(_member_info(name, len(payload)), io.BytesIO(payload))


# tarfile's own GNU header of a member "x" of size 0: every field but name, size and checksum is
# the same for every member we write, so a header is this template with those three filled in
_TEMPLATE = _member_info("x", 0).tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
# the checksum is the sum of the header's bytes with its own field as spaces: the template's, less
# its name and size fields, plus the member's
_BASE_SUM = sum(_TEMPLATE) - sum(_TEMPLATE[148:156]) + 8 * 32 - sum(_TEMPLATE[0:100]) - sum(_TEMPLATE[124:136])


class TarMembers:
    """Writes a tar stream member by member, byte for byte what `tarfile` writes in GNU format
    (tests/test_io_path.py checks it), at a fraction of its cost: `tarfile` builds each 512-byte
    header field by field in Python, ~20 us a member, which was a quarter of the dry run on
    small images. Names over 100 bytes or sizes over 8 GiB take `tarfile`'s own header."""

    def __init__(self, handle):
        self.handle, self.offset = handle, 0

    def add(self, name: str, payload: bytes) -> None:
        raw, size = name.encode("utf-8", "surrogateescape"), len(payload)
        if len(raw) <= tarfile.LENGTH_NAME and size < 8 ** 11:
            size_field = b"%011o\0" % size
            header = bytearray(_TEMPLATE)
            header[0:len(raw)] = raw
            header[len(raw):100] = bytes(100 - len(raw))
            header[124:136] = size_field
            header[148:155] = b"%06o\0" % (_BASE_SUM + sum(raw) + sum(size_field))
        else:
            header = _member_info(name, size).tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        pad = -size % tarfile.BLOCKSIZE
        self.handle.write(header)
        self.handle.write(payload)
        if pad:
            self.handle.write(b"\0" * pad)
        self.offset += len(header) + size + pad

    def close(self) -> None:
        """The end-of-archive blocks, padded to a whole record, as `tarfile` closes a stream."""
        end = 2 * tarfile.BLOCKSIZE
        end += -(self.offset + end) % tarfile.RECORDSIZE
        self.handle.write(b"\0" * end)
        self.offset += end


def _durable(fs, path: str) -> None:
    """fsync a local file or folder (object stores make a write durable when it returns)."""
    if isinstance(fs, LocalFileSystem):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ShardWriter:
    def __init__(self, out_root: str, name: str, run: RunContext, normalize_image_format: Optional[str] = None):
        out = OutputDir(out_root, must_exist=False)
        self.fs, self.name, self.run = out.fs, name, run
        self.out = out
        self.final, self.tmp = out.shard_files(name), out.temp_files(name, run.run_id, uuid.uuid4().hex[:8])
        if run.leased and isinstance(self.fs, LocalFileSystem) and not self.fs.exists(out.root):  # made, then gone
            raise OutputUnwritable(f"the output folder {out.path} is gone: it was removed or moved while this run wrote "
                                   "it, and the shards committed into it with it; this run stops. Rerun the same "
                                   "command to write them again")
        self.fs.makedirs(out.shards_dir, exist_ok=True)  # a killed run's partial files: run.execute removed them
        if self.fs.exists(self.final["stats"]):
            # redone (--overwrite, a changed input, a retry): no longer complete from here on, so a crash
            # between the renames below cannot leave the new tar beside the old parquet and stats. The old tar
            # and parquet stay until replaced: a reader that listed the shard as complete still reads it whole
            self.fs.rm(self.final["stats"])
        self.normalize = normalize_image_format
        self.handle = self.fs.open(self.tmp["tar"], "wb")
        # GNU headers (long names when needed) rather than webdataset's PAX ones, written by TarMembers
        self.tar = TarMembers(self.handle)
        self.rows: list[dict] = []
        self.counts, self.reasons = Counter(inputs=0, kept=0, rejected=0, error=0), Counter()
        self.score_sums = Counter()
        self.image_exts: Counter = Counter()  # output image members by extension
        self.guards: Counter = Counter()  # text-guard flags (stages/guards.py) by name

    def add(self, sample: Sample) -> None:
        if sample.status == KEPT:
            try:
                image, image_ext = output_image(sample, self.normalize)
            except (OSError, ValueError) as exc:  # pixels the target cannot hold: JPEG has at most 65,500 a side
                size = sample.image.size if sample.image is not None else None
                wide = self.normalize == "jpg" and size is not None and max(size) > 65500
                sample.fail("encode_error", f"the {'x'.join(map(str, size or ('?',)))} image could not be written as "
                            f"output.normalize_image_format={self.normalize} ({type(exc).__name__}: {exc})"
                            + ("; JPEG holds at most 65500 pixels a side: `png` or null writes it" if wide else ""))
                sample.caption = None  # nothing of it is written
            else:
                self.image_exts[image_ext] += 1
        record = build_record(sample, self.run)
        record_bytes = record_json(record)
        if sample.status == KEPT:
            member = {"__key__": sample.key, image_ext: image, CAPTION_EXT: sample.caption.encode("utf-8"),
                      META_EXT: record_bytes}
            if sample.decision.write_orig:
                member[ORIG_CAPTION_EXT] = sample.caption_orig.encode("utf-8")
            for name, extra in sample.generation.captions.items():  # generation.captions: KEY.<name>.txt
                # always written, empty when the guards found the text unusable (the record says why), so
                # every kept sample has the same members and column-inferring loaders (HF datasets) load it
                usable = extra["text"] if extra["text"] and not extra["problem"] else ""
                member[f"{name}.{CAPTION_EXT}"] = usable.encode("utf-8")
            key = member.pop("__key__")
            for ext in sorted(member):  # one sample's members together, in a stable order
                self.tar.add(f"{key}.{ext}", member[ext])
        self.rows.append(parquet_row(record, record_bytes.decode("utf-8")))
        self.counts["inputs"] += 1
        self.counts[sample.status] += 1
        if sample.reason:
            self.reasons[f"{sample.status}:{sample.reason}"] += 1
        for name in ("clip_orig", "clip_rewrite"):
            if sample.scores.get(name) is not None:
                self.score_sums[f"{name}_sum"] += sample.scores[name]
                self.score_sums[f"{name}_n"] += 1
        self.score_sums["new_tokens"] += sample.generation.new_tokens or 0
        self.guards.update(sample.generation.guards)  # problems (loops, refusals, echoes) are reasons
        if sample.status == KEPT and sample.decision.outcome == "repaired":
            self.score_sums["repaired"] += 1
            self.score_sums["sentences_dropped"] += len(sample.repair.dropped)
        if sample.status == KEPT and sample.decision.orig_passed is False:
            self.score_sums["corrected"] += 1  # kept with a rewrite; CLIP judged the original wrong

    def commit(self, read_error: Optional[str], ignored_members: int, timings: dict,
               input_identity: Optional[dict] = None, input_url: Optional[str] = None) -> dict:
        self.tar.close()
        self.handle.close()
        with self.fs.open(self.tmp["parquet"], "wb") as handle:
            pq.write_table(pa.Table.from_pylist(self.rows, schema=PARQUET_SCHEMA), handle)
        stats = {"schema": SCHEMA_VERSION, "shard": self.name, "counts": dict(self.counts),
                 "reasons": dict(sorted(self.reasons.items())), "read_error": read_error,
                 "ignored_members": ignored_members, "scores": dict(self.score_sums),
                 "fingerprint": self.run.fingerprint, "settings": self.run.settings or None,
                 "input": input_identity, "input_url": input_url,
                 "image_exts": dict(sorted(self.image_exts.items())), "run_id": self.run.run_id,
                 "guards": dict(sorted(self.guards.items())),
                 "timings_s": {k: round(v, 4) for k, v in timings.items()}}
        c = stats["counts"]
        if c["inputs"] != c["kept"] + c["rejected"] + c["error"]:
            raise AssertionError(f"shard {self.name}: count invariant broken: {c}")
        with self.fs.open(self.tmp["stats"], "w") as handle:
            json.dump(stats, handle, indent=1)
        holder = self.out.read_json(self.out.top(LEASE_FILE))
        if holder is not None and holder.get("run_id") != self.run.run_id:
            raise OutputBusy(f"run {holder.get('run_id')} took over the lease of {self.out.path} (this run was silent "
                             f"too long): shard {self.name} is not committed, and this run stops")
        for kind in ("tar", "parquet", "stats"):  # stats last: it marks the shard done
            _durable(self.fs, self.tmp[kind])  # on disk before the stats say so (a power loss)
            self.fs.mv(self.tmp[kind], self.final[kind])
        _durable(self.fs, self.final["stats"].rsplit("/", 1)[0])  # the renames themselves
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
