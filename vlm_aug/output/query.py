"""Query an output directory from its parquet sidecars: one sample's history (`trace`) and
counts and score quantiles per shard and overall (`stats`)."""

from __future__ import annotations

import json
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from vlm_aug.config import with_defaults
from vlm_aug.shards.layout import LEASE_FILE, MANIFEST, OutputDir
from vlm_aug.shards.lease import Lease
from vlm_aug.shards.read import shard_name

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
SCORES = ("clip_orig", "clip_rewrite", "clip_final")  # before, after, and what training sees


def trace(out: OutputDir, key: str, shard: Optional[str] = None) -> list[dict]:
    """Every record whose output key is `key` (one per shard that has it), full provenance."""
    shards = [shard] if shard else None
    table = out.table(["key", "provenance"], filter_expr=pads.field("key") == key, shards=shards)
    found = []
    for row in table.to_pylist():
        record = json.loads(row["provenance"])
        record["out_shard"] = row["out_shard"]
        found.append(record)
    return found


def repaired_scores(out: OutputDir, names: list[str]) -> dict[tuple[str, str], Optional[float]]:
    """(out_shard, key) -> `scoring.clip_repaired`, the cosine of the repaired caption a sample with
    outcome `repaired` trains on. Not a parquet column: read from the provenance of those rows only."""
    if not names:
        return {}
    table = out.table(["key", "provenance"], filter_expr=pads.field("outcome") == "repaired", shards=names)
    return {(row["out_shard"], row["key"]): (json.loads(row["provenance"]).get("scoring") or {}).get("clip_repaired")
            for row in table.to_pylist()}


def _final_score(table: pa.Table, repaired: Optional[dict] = None) -> pa.Array:
    """The CLIP cosine of the caption a kept sample trains on (null unless kept): the rewrite's, the
    original's, or for outcome `repaired` the repaired caption's (`repaired`: from `repaired_scores`)."""
    kept = pc.equal(table["status"], "kept")
    uses_rewrite = pc.equal(table["outcome"], "rewrite")
    final = pc.if_else(uses_rewrite, table["clip_rewrite"], table["clip_orig"])
    is_repaired = pc.fill_null(pc.equal(table["outcome"], "repaired"), False)
    if pc.any(is_repaired).as_py():
        rows = table.filter(is_repaired).select(["out_shard", "key"]).to_pylist()
        values = pa.array([(repaired or {}).get((r["out_shard"], r["key"])) for r in rows], pa.float64())
        final = pc.replace_with_mask(_whole(final), _whole(is_repaired), values)
    return pc.if_else(kept, final, pa.scalar(None, pa.float64()))


def _whole(values):
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _distribution(values: pa.ChunkedArray | pa.Array) -> dict:
    values = pc.drop_null(values)
    if len(values) == 0:
        return {"n": 0, "mean": None, "quantiles": {}}
    qs = pc.quantile(values, q=list(QUANTILES), interpolation="linear").to_pylist()
    return {"n": len(values), "mean": round(pc.mean(values).as_py(), 6),
            "quantiles": {f"p{int(q * 100)}": round(v, 6) for q, v in zip(QUANTILES, qs)}}


def _counts(table: pa.Table) -> dict:
    status = {r["status"]: r["count"] for r in _count_by(table, ["status"])}
    reasons = {f"{r['status']}:{r['reason']}": r["count"] for r in _count_by(table, ["status", "reason"])
               if r["reason"] is not None}
    counts = {"inputs": table.num_rows, **{s: status.get(s, 0) for s in ("kept", "rejected", "error")}}
    return {"counts": counts, "reasons": dict(sorted(reasons.items()))}


def _count_by(table: pa.Table, keys: list[str]) -> list[dict]:
    if table.num_rows == 0:
        return []
    grouped = table.select(keys).group_by(keys, use_threads=False).aggregate([([], "count_all")])
    return [{**r, "count": r.pop("count_all")} for r in grouped.to_pylist()]


def _summary(table: pa.Table) -> dict:
    summary = _counts(table)
    summary["scores"] = {name: _distribution(table[name]) for name in SCORES}
    return summary


def configurations(out: OutputDir, all_stats: Optional[list[dict]] = None, manifest: Optional[dict] = None) -> dict:
    """The settings that made the output, counted from its shards' stats (`all_stats`, else read):
    fingerprint -> shards, inputs, kept, and the settings themselves (from the manifest). More than
    one when runs with other settings appended (`--allow-config-change`)."""
    known = (out.manifest() if manifest is None else manifest).get("configurations") or {}
    found: dict = {}
    for s in out.all_stats() if all_stats is None else all_stats:
        fp = s.get("fingerprint") or "unknown"
        entry = found.setdefault(fp, {"shards": 0, "inputs": 0, "kept": 0, "settings": None})
        if entry["settings"] is None:  # the shard's own record of what made it, else the manifest's (a run
            # stopped before writing its manifest is known from its shards only); keys left out at their default filled
            entry["settings"] = with_defaults(s.get("settings") or (known.get(fp) or {}).get("settings"))
        entry["shards"] += 1
        entry["inputs"] += s["counts"]["inputs"]
        entry["kept"] += s["counts"]["kept"]
    return found


def differing_settings(configs: dict) -> list[str]:
    """The settings keys whose value differs between the configurations (all of them if one is unknown)."""
    known = [c["settings"] for c in configs.values() if c.get("settings")]
    keys = sorted({k for s in known for k in s})
    if len(known) < len(configs):
        return keys
    return [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in known}) > 1]


def _modified(out: OutputDir, path: str) -> Optional[float]:
    """When the file was last written (seconds since the epoch), where the store says; else None."""
    try:
        info = out.fs.info(path)
    except OSError:
        return None
    when = info.get("mtime", info.get("LastModified", info.get("updated")))
    if hasattr(when, "timestamp"):
        return when.timestamp()
    try:
        return float(when) if when is not None else None
    except (TypeError, ValueError):
        return None


def unfinished(out: OutputDir, manifest: dict, all_stats: list[dict], done: str = "read") -> list[str]:
    """What a reader of the output should know of a run that has not finished it: one writing it now, or
    one stopped part way (its lease file left, no manifest.json yet, shards committed after the manifest,
    shards the manifest counts that are no longer complete because a run was redoing them). `done`: what
    the reader did with the complete shards ("read", "exported")."""
    notes, where = [], out.path
    if Lease(out, "reader").busy():
        notes.append(f"a run is writing {where} now (its lease is held): the shards complete at this moment were "
                     f"{done}; do it again when the run has finished")
    elif out.fs.exists(out.top(LEASE_FILE)):
        notes.append(f"a run on {where} stopped without finishing (it left its lease file): rerun its command to "
                     "finish the rest")
    if not out.fs.exists(out.top(MANIFEST)):
        notes.append(f"{where} has no manifest.json: the run that writes it has not ended or was stopped; the complete "
                     f"shards were {done}; rerun the run's command to finish the rest")
        return notes
    runs = {r.get("run_id") for r in manifest.get("runs") or []} | {manifest.get("run_id")}
    # shards of a run the manifest does not name, committed after it (a run stopped before an older manifest's
    # run, which versions before the run history did not enter, is not later)
    written = _modified(out, out.top(MANIFEST))
    later = [s for s in all_stats if s.get("run_id") not in runs
             and (written is None or (_modified(out, out.file(s["shard"], "stats")) or written) >= written)]
    if later:
        notes.append(f"{len(later)} shard(s) were written after manifest.json by a run that has not written its own "
                     "(running, or stopped): the manifest does not describe them")
    configs = manifest.get("configurations")
    if isinstance(configs, dict):
        gone = sum(c.get("shards") or 0 for c in configs.values()) - (len(all_stats) - len(later))
        if gone > 0:
            notes.append(f"{gone} shard(s) that manifest.json counts are not complete now: a later run is redoing "
                         f"them or was stopped while it did, and their samples were not {done}; rerun that run's "
                         "command to finish them")
    return notes


def failed_inputs(manifest: dict, complete: set[str]) -> dict[str, str]:
    """Input URL -> error of the shards the last run failed (the manifest's `shards.failed`) that are not
    in the output now: their samples are nowhere in it."""
    failed = (manifest.get("shards") or {}).get("failed") or []
    return {f["url"]: f.get("error") or "" for f in failed
            if isinstance(f, dict) and f.get("url") and shard_name(f["url"]) not in complete}


def stats(out: OutputDir, per_shard: bool = True, shard_stats: Optional[list[dict]] = None) -> dict:
    """Counts by status and reason and CLIP score distributions, overall and per shard. `shard_stats`:
    a list to fill with the stats of the shards counted (for a caller that describes each shard)."""
    columns = ["key", "status", "reason", "outcome", "clip_orig", "clip_rewrite"]
    names = out.complete_names()  # one listing: the rows, the stats and the count are of the same shards
    table = out.table(columns, shards=names)
    all_stats = [s for s in (out.shard_stats(n) for n in names) if s is not None]
    if shard_stats is not None:
        shard_stats.extend(all_stats)
    # sentence repair: only the shards with repaired rows have their provenance read (those rows only)
    repaired_rows = table.filter(pc.fill_null(pc.equal(table["outcome"], "repaired"), False))
    with_repairs = sorted(set(repaired_rows["out_shard"].to_pylist()))
    table = table.append_column("clip_final", _final_score(table, repaired_scores(out, with_repairs)))
    manifest = out.manifest()
    result = {"output": out.path, "shards": len(names), "overall": _summary(table),
              "configurations": configurations(out, all_stats, manifest)}
    guards: dict = {}
    for s in all_stats:  # what the text guards did to kept texts (their problems are reasons)
        for name, n in (s.get("guards") or {}).items():
            guards[name] = guards.get(name, 0) + n
    result["overall"]["guards"] = dict(sorted(guards.items()))
    repairs = {k: sum((s.get("scores") or {}).get(k, 0) for s in all_stats) for k in ("repaired", "sentences_dropped")}
    if repairs["repaired"] or repairs["sentences_dropped"]:  # policy.repair: kept without their failing sentences
        result["overall"]["repair"] = repairs
    # input shards not read to their end (not a tar, empty file, cut short): what followed the fault is not here
    result["read_errors"] = {s["shard"]: s["read_error"] for s in all_stats if s.get("read_error")}
    result["failed_inputs"] = failed_inputs(manifest, set(names))
    if per_shard:
        order = pc.sort_indices(table, [("out_shard", "ascending")])
        table = table.take(order)
        names = table["out_shard"].combine_chunks()
        bounds = pc.run_end_encode(names).run_ends.to_pylist() if len(names) else []
        start, result["per_shard"] = 0, {}
        for end in bounds:
            part = table.slice(start, end - start)
            result["per_shard"][part["out_shard"][0].as_py()] = _summary(part)
            start = end
    return result
