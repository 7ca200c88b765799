"""The output directory: the one place that knows where a run's files live, what makes a shard
complete, which files are temporary, and how the manifest, stats and sizes are read and written.

```
OUT/shards/NAME.tar  NAME.parquet  NAME.stats.json   one output shard (stats written last)
OUT/shards/.NAME.*.tmp-RUNID                         a shard being written by run RUNID (hidden: a
                                                     consumer that reads a folder skips it)
OUT/shards/sizes.json                                kept samples per tar (open_clip reads it)
OUT/manifest.json  README.md  croissant.json  report.html
```
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import sys
import tarfile
import time
from typing import Iterator, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow as pa

SUFFIXES = {"tar": ".tar", "parquet": ".parquet", "stats": ".stats.json"}
TEMP_MARK = ".tmp-"
LEASE_FILE = ".vlm_aug.lease"  # one run at a time (shards/lease.py)
MANIFEST, SIZES = "manifest.json", "sizes.json"


class OutputError(FileNotFoundError):
    """An output directory that cannot be read; the message names the path and the fix."""


BUCKET_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "az", "oss"}  # object stores whose first path part is a bucket


# errno -> what to do when a local disk refuses a write (the local executor's stop, the CLI's message)
DISK_FIXES = {errno.ENOSPC: "free space on its disk", errno.EDQUOT: "free space within the disk quota",
              errno.EFBIG: "raise the file size limit (`ulimit -f`)", errno.EROFS: "use a writable disk",
              errno.EACCES: "give this user write access", errno.EPERM: "give this user write access"}


def replace_file(fs, tmp: str, path: str, write, **open_kw) -> None:
    """Whole or not at all: `write(handle)` into `tmp`, renamed to `path`; `tmp` removed when that fails
    (a full disk), without hiding the write's own error."""
    try:
        with fs.open(tmp, "w", **open_kw) as handle:
            write(handle)
        fs.mv(tmp, path)
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except OSError:
            pass
        raise


class OutputUnwritable(OSError):
    """The output location refuses writes (read-only, full, no permission)."""


class OutputDir:
    """A vlm_aug output directory (local path or fsspec URL). `must_exist` for readers: the
    directory must hold a run's `shards/` folder."""

    def __init__(self, path: str, must_exist: bool = True):
        self.path = path
        self.fs, root = fsspec.core.url_to_fs(path)
        self.root = root.rstrip("/")
        self.shards_dir = f"{self.root}/shards"
        if must_exist and not self.fs.isdir(self.shards_dir):
            raise OutputError(f"{path} is not a vlm_aug output directory (no shards/ folder): "
                              "pass the --output directory of a `vlm-aug run`")

    # ---- paths ---------------------------------------------------------------------------
    def holds_shard_path(self, url: str) -> bool:
        """Whether `url` lies in this output's shards folder (where a run writes; links resolved)."""
        fs, path = fsspec.core.url_to_fs(url)
        if type(fs) is not type(self.fs):
            return False
        if isinstance(fs, LocalFileSystem):
            return os.path.realpath(os.path.dirname(path)) == os.path.realpath(self.shards_dir)
        return posixpath.dirname(path.rstrip("/")) == self.shards_dir

    def file(self, name: str, kind: str) -> str:
        """Path of shard `name`'s file of `kind` (tar, parquet, stats)."""
        return f"{self.shards_dir}/{name}{SUFFIXES[kind]}"

    def url(self, name: str, kind: str) -> str:
        """The same file as a URL (protocol kept), for readers that open it with fsspec themselves."""
        return f"{self.path.rstrip('/')}/shards/{name}{SUFFIXES[kind]}"

    def shard_files(self, name: str) -> dict[str, str]:
        return {kind: self.file(name, kind) for kind in SUFFIXES}

    def temp_files(self, name: str, run_id: str, attempt: str = "") -> dict[str, str]:
        """`.NAME.tar.tmp-RUNID.ATTEMPT` and so on: a retry of the shard in the same run (another Ray
        actor, while the killed one may still be writing) never opens or removes the files of another.
        Hidden (a leading dot), so that a consumer reading the folder (Hugging Face `datasets` skips
        hidden files) never reads a shard being written or left by a killed run."""
        tail = f"{run_id}.{attempt}" if attempt else run_id
        return {kind: f"{self.shards_dir}/.{name}{suffix}{TEMP_MARK}{tail}" for kind, suffix in SUFFIXES.items()}

    def top(self, filename: str) -> str:
        return f"{self.root}/{filename}"

    # ---- completion ----------------------------------------------------------------------
    def _listing(self) -> set[str]:
        self.fs.invalidate_cache()  # other processes (Ray actors, another run) write here
        if not self.fs.isdir(self.shards_dir):
            return set()
        return {p.rsplit("/", 1)[-1] for p in self.fs.ls(self.shards_dir, detail=False)}

    def complete_names(self) -> list[str]:
        """Shards whose tar, parquet and stats all exist. The writer renames the stats file last,
        so its presence means the other two are whole; a shard missing any of them is redone."""
        files = self._listing()
        stats_suffix = SUFFIXES["stats"]
        names = [f[: -len(stats_suffix)] for f in files if f.endswith(stats_suffix)]
        return sorted(n for n in names if all(f"{n}{s}" in files for s in SUFFIXES.values()))

    def is_complete(self, name: str) -> bool:
        return all(self.fs.exists(p) for p in self.shard_files(name).values())

    # ---- stats, manifest, sizes --------------------------------------------------------------
    def read_json(self, path: str) -> Optional[dict]:
        try:
            with self.fs.open(path, "r") as handle:
                return json.load(handle)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_json(self, path: str, value, indent: int = 1) -> None:
        """Whole or not at all: written beside, then renamed (a crash or a full disk mid-write left a
        truncated manifest, which the next run read as none: the history of runs and settings lost)."""
        folder, base = path.rsplit("/", 1)
        self._replace(f"{folder}/.{base}{TEMP_MARK}json", path,  # hidden, as a shard's temporary files
                      lambda handle: json.dump(value, handle, indent=indent, default=str))

    def _replace(self, tmp: str, path: str, write) -> None:
        replace_file(self.fs, tmp, path, write)

    def shard_stats(self, name: str) -> Optional[dict]:
        return self.read_json(self.file(name, "stats"))

    def all_stats(self) -> list[dict]:
        """The stats of every complete shard, in name order."""
        return [s for s in (self.shard_stats(n) for n in self.complete_names()) if s is not None]

    def committed_stats(self, name: str, run_id: str) -> Optional[dict]:
        """The stats of shard `name` if run `run_id` committed it, else None."""
        stats = self.shard_stats(name) if self.is_complete(name) else None
        return stats if stats and stats.get("run_id") == run_id else None

    def manifest(self) -> dict:
        return self.read_json(self.top(MANIFEST)) or {}

    def write_manifest(self, manifest: dict) -> None:
        self.write_json(self.top(MANIFEST), manifest)

    def sizes(self) -> Optional[dict]:
        return self.read_json(f"{self.shards_dir}/{SIZES}")

    def write_sizes(self, all_stats: list[dict]) -> None:
        """Kept samples per tar, beside the tars: open_clip's trainer looks for it there."""
        self.write_json(f"{self.shards_dir}/{SIZES}", {f"{s['shard']}.tar": s["counts"]["kept"] for s in all_stats})

    def live_sizes(self) -> "LiveSizes":
        return LiveSizes(self)

    def write_text(self, filename: str, text: str) -> None:
        """Whole or not at all, as `write_json` (a reader never sees a half README.md)."""
        self._replace(self.top(f".{filename}{TEMP_MARK}txt"), self.top(filename), lambda handle: handle.write(text))

    # ---- temporary files ---------------------------------------------------------------------
    def remove_temps(self, names: Optional[set[str]], keep_run_id: Optional[str] = None) -> int:
        """Delete `.NAME.*.tmp-RUNID` files of the given shards (None: of every shard; never complete
        output); -> how many."""
        removed = 0
        for base in sorted(self._listing()):
            if TEMP_MARK not in base:
                continue
            final, tail = base.rsplit(TEMP_MARK, 1)
            final = final[1:] if final.startswith(".") else final  # (runs before 2026-11-30 did not hide them)
            name = next((final[: -len(s)] for s in SUFFIXES.values() if final.endswith(s)), final)
            run_id = tail.split(".", 1)[0]  # (a dotted shard name is whole: cc.part-000)
            if (names is None or name in names) and run_id != keep_run_id:
                self.fs.rm(f"{self.shards_dir}/{base}")
                removed += 1
        return removed

    def foreign_file(self) -> Optional[str]:
        """A file showing that this existing, non-empty directory is not a vlm_aug output (None when it
        is one, even one whose first run was cut short, or is empty or absent). A run must not write its
        manifest, card and shards over someone else's files."""
        if not self.fs.isdir(self.root):
            return None
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))
        if MANIFEST in names or LEASE_FILE in names:
            return None
        inner = sorted(self._listing())
        if any(n.endswith(SUFFIXES["stats"]) or n == SIZES or TEMP_MARK in n for n in inner):
            return None
        others = [f"{self.path.rstrip('/')}/{n}" for n in names if n != "shards"]
        others += [f"{self.path.rstrip('/')}/shards/{n}" for n in inner]
        return others[0] if others else None

    def check_writable(self) -> None:
        """Fail before any model loads if the output cannot be written."""
        probe = f"{self.shards_dir}/.write-probe"
        self._check_bucket()
        try:
            self.fs.makedirs(self.shards_dir, exist_ok=True)
            with self.fs.open(probe, "wb") as handle:
                handle.write(b"ok")
            self.fs.rm(probe)
        except OSError as exc:
            raise OutputUnwritable(f"cannot write to output {self.path!r}: {exc.strerror or exc}; "
                                   "choose another --output or fix its permissions / free space") from None

    def _check_bucket(self) -> None:
        """On an object store, makedirs creates a missing bucket (s3fs does, in the default region): a
        typo in --output made a new bucket and wrote there. The bucket must exist."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        if not set(protocols) & BUCKET_STORES:
            return
        bucket = self.fs._strip_protocol(self.path).split("/", 1)[0]
        try:
            found = self.fs.exists(bucket)
        except OSError:
            return  # not allowed to look: the write probe below says what is wrong
        if not found:
            raise OutputUnwritable(f"output {self.path!r}: the bucket {bucket!r} does not exist. Create it first "
                                   "(vlm-aug does not: a typo would make a new bucket), or fix the --output URL")

    # ---- reading the shards ----------------------------------------------------------------------
    TABLE_GROUP = 256  # parquet files read as one dataset (an audit saw pyarrow hold ~60 KB a file read at once:
    # 1.0 GB for `stats` on 12,000 shards, 0.35 GB in groups; not seen again on other outputs, where both were alike)

    def table(self, columns: list[str], filter_expr=None, shards: Optional[list[str]] = None) -> pa.Table:
        """Rows of every complete shard's parquet (or of `shards`), plus an `out_shard` column; read
        `TABLE_GROUP` files at a time, so memory holds the rows, not every file's reader at once."""
        names = self.complete_names() if shards is None else shards
        if not names:
            return pa.table({c: [] for c in columns + ["out_shard"]})
        import pyarrow.dataset as pads  # here: it imports pandas (~0.4 s of every worker's start, unused there)

        parts = []
        for start in range(0, len(names), self.TABLE_GROUP):
            group = names[start:start + self.TABLE_GROUP]
            try:
                dataset = pads.dataset([self.file(n, "parquet") for n in group], format="parquet", filesystem=self.fs)
                part = dataset.to_table(columns=columns + ["__filename"], filter=filter_expr)
            except (pa.ArrowInvalid, OSError) as exc:  # a damaged sidecar (a disk fault, an edit): name it
                raise self.damaged(group, exc) from None
            out_shard = [f.rsplit("/", 1)[-1][: -len(SUFFIXES["parquet"])] for f in part.column("__filename").to_pylist()]
            parts.append(part.drop_columns(["__filename"]).append_column("out_shard", pa.array(out_shard, pa.string())))
        return pa.concat_tables(parts)

    def damaged(self, names: list[str], exc: Exception) -> "OutputError":
        """The error for a complete shard whose parquet cannot be read: which one, and how to redo it."""
        import pyarrow.parquet as pq

        for name in names:
            try:
                with self.fs.open(self.file(name, "parquet"), "rb") as handle:
                    pq.read_metadata(handle)
            except (pa.ArrowInvalid, OSError) as bad:
                exc = bad
                break
        else:
            name = None
        where = self.file(name, "parquet") if name else f"a parquet of {self.path}"
        fix = (f"remove {self.file(name, 'stats')} and rerun the run's command to redo the shard" if name
               else "rerun the run's command with --overwrite")
        return OutputError(f"{where} cannot be read ({type(exc).__name__}: {exc}): {fix}")

    def iter_tar_samples(self, name: str) -> Iterator[dict]:
        """Samples of one output tar as {"__key__": key, ext: bytes}, streamed in tar order."""
        with self.fs.open(self.file(name, "tar"), "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            current: dict = {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")  # a key may hold folders (webdataset's rule)
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current["__key__"] = key
                current[ext] = tar.extractfile(member).read()
            if current:
                yield current


class LiveSizes:
    """sizes.json kept current while a run commits shards, so that a run killed part way (SIGKILL, a
    preempted node) leaves the shards it committed in it: open_clip's trainer raises KeyError for a
    shard it lists without a size. The driver calls `add` with each committed shard's stats. The
    file is rewritten at each commit, unless the last rewrite was under 20 of its own durations ago
    (a slow store and many fast commits: then at the next commit after that; `flush` writes what
    is pending). The run's end rewrites it from every shard's stats, which is the whole truth."""

    GAP = 20  # rewrites at most every GAP x (the last rewrite's seconds): a few percent of the driver's time

    def __init__(self, out: OutputDir):
        self.out = out
        self.sizes = dict(out.sizes() or {})
        self.next_at, self.pending, self.warned = 0.0, False, False

    def add(self, stats: dict) -> None:
        self.sizes[f"{stats['shard']}.tar"] = stats["counts"]["kept"]
        self.pending = True
        if time.monotonic() >= self.next_at:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        start = time.monotonic()
        try:
            self.out.write_json(f"{self.out.shards_dir}/{SIZES}", dict(sorted(self.sizes.items())))
        except OSError as exc:  # the shards stand; the run's end writes it again
            if not self.warned:
                print(f"vlm-aug: warning: could not update {SIZES} ({exc}); retried at the next shard", file=sys.stderr)
                self.warned = True
            return
        now = time.monotonic()
        self.next_at, self.pending = now + self.GAP * (now - start), False
