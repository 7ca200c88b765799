"""Read a finished output directory: its complete shards, parquet sidecars, manifest and tars."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import Iterator, Optional

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads

STATS_SUFFIX = ".stats.json"


class OutputError(FileNotFoundError):
    """An output directory that cannot be read; the message names the path and the fix."""


@dataclass
class OutputDir:
    """A vlm_aug output directory (local path or fsspec URL)."""

    path: str

    def __post_init__(self):
        self.fs, root = fsspec.core.url_to_fs(self.path)
        self.root = root.rstrip("/")
        if not self.fs.isdir(f"{self.root}/shards"):
            raise OutputError(f"{self.path} is not a vlm_aug output directory (no shards/ folder): "
                              "pass the --output directory of a `vlm-aug run`")

    def shard_names(self) -> list[str]:
        """Names of the complete shards (their stats file, the completion marker, exists)."""
        found = self.fs.glob(f"{self.root}/shards/*{STATS_SUFFIX}")
        return sorted(p.rsplit("/", 1)[-1][: -len(STATS_SUFFIX)] for p in found)

    def file(self, name: str, kind: str) -> str:
        return f"{self.root}/shards/{name}.{kind}"

    def manifest(self) -> dict:
        path = f"{self.root}/manifest.json"
        if not self.fs.exists(path):
            return {}
        with self.fs.open(path, "r") as handle:
            return json.load(handle)

    def shard_stats(self) -> list[dict]:
        stats = []
        for name in self.shard_names():
            with self.fs.open(self.file(name, "stats.json"), "r") as handle:
                stats.append(json.load(handle))
        return stats

    def table(self, columns: list[str], filter_expr=None, shards: Optional[list[str]] = None) -> pa.Table:
        """Rows of every complete shard's parquet (or of `shards`), plus an `out_shard` column."""
        names = self.shard_names() if shards is None else shards
        if not names:
            return pa.table({c: [] for c in columns + ["out_shard"]})
        files = [self.file(n, "parquet") for n in names]
        dataset = pads.dataset(files, format="parquet", filesystem=self.fs)
        table = dataset.to_table(columns=columns + ["__filename"], filter=filter_expr)
        out_shard = [f.rsplit("/", 1)[-1][: -len(".parquet")] for f in table.column("__filename").to_pylist()]
        return table.drop_columns(["__filename"]).append_column("out_shard", pa.array(out_shard, pa.string()))

    def iter_tar_samples(self, name: str) -> Iterator[dict]:
        """Samples of one output tar as {"__key__": key, ext: bytes}, streamed in tar order."""
        with self.fs.open(self.file(name, "tar"), "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            current: dict = {}
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current["__key__"] = key
                current[ext] = tar.extractfile(member).read()
            if current:
                yield current
