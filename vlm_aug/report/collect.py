"""Read a run's output directory in one streaming pass: counts, score arrays, diversity
figures over a bounded seeded subset, and a bounded seeded choice of gallery rows.

Memory and time stay bounded for runs of millions of samples: only light columns
are streamed, texts are analysed for at most `text_limit` samples, and only the
chosen gallery rows are read in full (provenance included) afterwards.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from vlm_aug.output.query import configurations, unfinished
from vlm_aug.report.diversity import CaptionSetStats, RewriteStats, words
from vlm_aug.shards.layout import OutputDir

LIGHT_COLUMNS = ["key", "status", "reason", "caption", "caption_orig", "caption_rewrite",
                 "clip_orig", "clip_rewrite", "image_sha256", "orig_passed", "outcome"]
STATUSES = ("kept", "rejected", "error")
_SCALE = float(2 ** 64)


@dataclass
class ReportOptions:
    per_status: int = 48  # gallery cards drawn at random per status
    per_view: int = 48  # cards in each sorted view (lowest scores, biggest gain)
    text_limit: int = 100_000  # samples whose texts feed the diversity figures
    seed: int = 0
    semantic: bool = True  # the semantic figures (output/semantic.py; cached in OUT/semantic.json)
    reference: Optional[tuple[str, ...]] = None  # reference caption shards; None: the run's report.reference


@dataclass
class RunData:
    out: str
    options: ReportOptions
    manifest: Optional[dict]
    total_rows: int = 0
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)  # "status:reason" -> samples
    shards: list = field(default_factory=list)  # (name, inputs, kept)
    read_errors: dict = field(default_factory=dict)  # shard -> why its input was not read to its end (stats)
    clip_orig: array = field(default_factory=lambda: array("d"))
    clip_rewrite: array = field(default_factory=lambda: array("d"))
    text_rows: int = 0
    before: CaptionSetStats = field(default_factory=CaptionSetStats)
    after: CaptionSetStats = field(default_factory=CaptionSetStats)  # rewrites
    final: CaptionSetStats = field(default_factory=CaptionSetStats)  # training captions of kept samples
    rewrites: RewriteStats = field(default_factory=RewriteStats)
    cards: list = field(default_factory=list)  # full parquet rows + "views" (set of view names)
    configurations: dict = field(default_factory=dict)  # fingerprint -> settings, shards, inputs, kept (the shards')
    notes: list = field(default_factory=list)  # a run writing the output now, or one stopped part way


class _Picker:
    """Bounded selections kept while streaming: (file index, row index) per view."""

    def __init__(self, options: ReportOptions):
        self.options = options
        self.heaps: dict[str, list] = {}

    def offer(self, view: str, priority: float, where: tuple, limit: int) -> None:
        """Keep the `limit` entries with the smallest `priority` in `view`."""
        heap = self.heaps.setdefault(view, [])
        item = (-priority, where)
        if len(heap) < limit:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def chosen(self) -> dict[tuple, set]:
        views: dict[tuple, set] = {}
        for view, heap in self.heaps.items():
            for _, where in heap:
                views.setdefault(where, set()).add(view)
        return views


def _rank(seed: int, shard: str, key: str) -> float:
    """A stable pseudo-random number in [0, 1) per sample: the same seed draws the same samples."""
    digest = hashlib.blake2b(f"{seed}\0{shard}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def parquet_files(out: str) -> tuple:
    """-> (output dir, parquet paths of its complete shards); a clear error when it holds none."""
    output = OutputDir(out, must_exist=False)
    files = [output.file(name, "parquet") for name in output.complete_names()]
    if not files:
        raise FileNotFoundError(f"{out} holds no shards/*.parquet of a complete shard: is it the output "
                                "directory of a `vlm-aug run` that completed at least one shard?")
    return output, files


def collect(out: str, options: ReportOptions = ReportOptions()) -> RunData:
    output, files = parquet_files(out)
    fs = output.fs
    data = RunData(out=out, options=options, manifest=output.manifest() or None)
    for path in files:  # one file open at a time: a run may have thousands of shards
        try:
            with fs.open(path, "rb") as handle:
                data.total_rows += pq.read_metadata(handle).num_rows
        except (pa.ArrowInvalid, OSError) as exc:  # a damaged sidecar: name it and the way to redo it
            name = path.rsplit("/", 1)[-1][: -len(".parquet")]
            raise output.damaged([name], exc) from None
    text_share = min(1.0, options.text_limit / max(data.total_rows, 1))
    picker = _Picker(options)
    all_stats: list[dict] = []
    for index, path in enumerate(files):
        name = path.rsplit("/", 1)[-1][: -len(".parquet")]
        with fs.open(path, "rb") as handle:
            _scan_file(data, picker, index, name, pq.ParquetFile(handle), text_share)
        shard = output.shard_stats(name) or {}
        if shard:
            all_stats.append(shard)
        if shard.get("read_error"):  # an input not read to its end: what followed the fault is not in the output
            data.read_errors[name] = shard["read_error"]
    data.cards = _read_cards(output, files, picker.chosen())
    data.configurations = configurations(output, all_stats, data.manifest or {})
    data.notes = unfinished(output, data.manifest or {}, all_stats)
    return data


def _scan_file(data: RunData, picker: _Picker, index: int, name: str, handle, text_share: float) -> None:
    inputs = kept = 0
    row = 0
    for batch in handle.iter_batches(columns=LIGHT_COLUMNS, batch_size=8192):
        for r in batch.to_pylist():
            _scan_row(data, picker, (index, row), name, r, text_share)
            inputs += 1
            kept += r["status"] == "kept"
            row += 1
    data.shards.append((name, inputs, kept))


def _scan_row(data: RunData, picker: _Picker, where: tuple, name: str, r: dict, text_share: float) -> None:
    opts = data.options
    if r.get("outcome") == "dry_run":  # a dry run's caption_rewrite is the original, copied: no rewrite
        r["caption_rewrite"] = None
    data.counts[r["status"]] += 1
    if r["status"] == "kept" and r.get("orig_passed") is False:
        data.counts["corrected"] += 1
    if r["reason"]:
        data.reasons[f"{r['status']}:{r['reason']}"] += 1
    orig, new = r["clip_orig"], r["clip_rewrite"]
    if orig is not None:
        data.clip_orig.append(orig)
    if new is not None:
        data.clip_rewrite.append(new)
        picker.offer("lowest", new, where, opts.per_view)
        if orig is not None:
            picker.offer("gain", orig - new, where, opts.per_view)
    rank = _rank(opts.seed, name, r["key"])
    picker.offer(f"sample:{r['status']}", rank, where, opts.per_status)
    if r.get("outcome") == "repaired":  # the gallery's `repaired` filter shows struck sentences
        data.counts["repaired"] += 1
        picker.offer("sample:repaired", rank, where, opts.per_status)
    if rank < text_share:
        data.text_rows += 1
        _add_texts(data, r)


def _add_texts(data: RunData, r: dict) -> None:
    orig, new = words(r["caption_orig"]), words(r["caption_rewrite"])  # tokenized once, used four times
    if r["caption_orig"] is not None:
        data.before.add(r["caption_orig"], orig)
    if r["caption_rewrite"]:
        data.after.add(r["caption_rewrite"], new)
    if r["status"] == "kept":
        same = r["caption"] == r["caption_rewrite"]
        data.final.add(r["caption"], new if same else orig if r["caption"] == r["caption_orig"] else None)
    data.rewrites.add(r["caption_orig"], r["caption_rewrite"], r["image_sha256"], orig, new)


def _read_cards(output: OutputDir, files: list[str], chosen: dict[tuple, set]) -> list[dict]:
    by_file: dict[int, list] = {}
    for (index, row), views in chosen.items():
        by_file.setdefault(index, []).append((row, views))
    cards = []
    for index in sorted(by_file):
        wanted = sorted(by_file[index], key=lambda item: item[0])
        with output.fs.open(files[index], "rb") as handle:
            table = pq.read_table(handle).take([row for row, _ in wanted])
        for record, (_, views) in zip(table.to_pylist(), wanted):
            record["views"] = views
            name = files[index].rsplit("/", 1)[-1][: -len(".parquet")]
            record["out_tar"] = output.url(name, "tar")
            record["provenance"] = json.loads(record["provenance"]) if record["provenance"] else {}
            cards.append(record)
    return cards
