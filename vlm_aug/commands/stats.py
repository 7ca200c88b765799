"""`vlm-aug stats OUT`: counts by status and reason and CLIP score quantiles, per shard and overall."""

from __future__ import annotations

import json
import sys

from vlm_aug.output.query import SCORES

QUANTILE_NAMES = ("p0", "p10", "p25", "p50", "p75", "p90", "p100")
LABELS = {"clip_orig": "original (before)", "clip_rewrite": "rewrite (after)", "clip_final": "training caption"}


def register(sub) -> None:
    p = sub.add_parser("stats", help="counts by status and reason, CLIP score quantiles, per shard and overall")
    p.add_argument("output", help="output directory of a run")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--no-per-shard", action="store_true", help="overall figures only")
    p.add_argument("--reference", nargs="+", action="extend", metavar="SHARDS",
                   help="reference caption shards (KEY.txt) or .txt files: alignment of each caption set to them")
    p.add_argument("--no-semantic", action="store_true", help="leave out the semantic figures (no text embedder)")
    p.set_defaults(func=cmd_stats)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_summary(title: str, summary: dict) -> list[str]:
    c = summary["counts"]
    lines = [f"{title}: inputs {c['inputs']}  kept {c['kept']}  rejected {c['rejected']}  error {c['error']}"]
    lines += [f"  {reason:<32} {n}" for reason, n in summary["reasons"].items()]
    if summary.get("repair"):
        r = summary["repair"]
        lines.append(f"  sentence repair: {r['repaired']} kept without their failing sentences, "
                     f"{r['sentences_dropped']} sentences dropped")
    if summary.get("guards"):
        lines.append("  text guards (rewrites changed, then scored): " +
                     ", ".join(f"{k} {n}" for k, n in summary["guards"].items()))
    lines.append(f"  {'CLIP cosine':<20} {'n':>6} {'mean':>8} " + " ".join(f"{q:>8}" for q in QUANTILE_NAMES))
    for name in SCORES:
        d = summary["scores"][name]
        qs = " ".join(f"{_fmt(d['quantiles'].get(q)):>8}" for q in QUANTILE_NAMES)
        lines.append(f"  {LABELS[name]:<20} {d['n']:>6} {_fmt(d['mean']):>8} {qs}")
    return lines


def report_config(out: str):
    """The run's `report` settings (semantic sample, thresholds, embedder, reference), from its manifest."""
    from vlm_aug.config import ReportConfig
    from vlm_aug.shards.layout import OutputDir

    saved = ((OutputDir(out).manifest() or {}).get("config") or {}).get("report") or {}
    return ReportConfig(**saved)


def semantic_of(out: str, reference=None) -> dict:
    """The `semantic` object: per caption set n, diversity, near-duplicate and redundancy shares and, with
    a reference, alignment; {"skipped": why} without an embedder."""
    from vlm_aug.output.embed import EmbedderUnavailable
    from vlm_aug.output.semantic import compute, summary

    try:
        return summary(compute(out, report_config(out), reference=reference))
    except EmbedderUnavailable as exc:
        return {"skipped": str(exc)}


def format_semantic(semantic) -> list[str]:
    if not semantic:
        return []
    if "skipped" in semantic:
        return ["", f"semantic figures skipped: {semantic['skipped']}"]
    sets = [s for s in ("original", "rewrite", "training", "reference") if s in semantic]
    lines = ["", f"semantic figures ({semantic['embedder']['name']}; Vendi = effective distinct meanings, higher "
                 "= more diverse; MAUVE higher / Fréchet lower = closer to the reference)",
             f"  {'set':<10} {'n':>6} {'Vendi':>8} {'meanings':>9} {'near-dup':>9} {'redundant':>10} {'MAUVE':>7} {'Fréchet':>8}"]
    for s in sets:
        f = semantic[s]
        a = f.get("alignment") or {}
        lines.append(f"  {s:<10} {f['n']:>6} {f['diversity']['vendi']:>8.2f} {f['diversity']['distinct_meanings']:>9.1f}"
                     f" {_fmt(f['near_duplicate_share']):>9} {_fmt(f['redundant_share']):>10}"
                     f" {_fmt(a.get('mauve')):>7} {_fmt(a.get('frechet')):>8}")
    return lines


def _listed(items: dict, header: str, more: str, shown: int) -> list[str]:
    """`header`, then `name: why` for the first `shown` of `items`, then how many more and where."""
    if not items:
        return []
    lines = [f"  {len(items)} {header}:"] + [f"    {name}: {why[:200]}" for name, why in list(items.items())[:shown]]
    if len(items) > shown:
        lines.append(f"    ... and {len(items) - shown} more ({more})")
    return lines


def read_error_lines(read_errors: dict, shown: int = 10) -> list[str]:
    """The output's shards whose input could not be read to its end, with why."""
    return _listed(read_errors, "input shard(s) could not be read to their end (what followed the fault is not "
                   "in the output; samples before it are)", "each shard's stats: read_error", shown)


def failed_input_lines(failed: dict, shown: int = 10) -> list[str]:
    """The input shards the last run failed, absent from the output, with why."""
    return _listed(failed, "input shard(s) failed in the last run and are not in the output (rerun the run's "
                   "command to retry them)", "manifest.json: shards.failed", shown)


def cmd_stats(args) -> int:
    from vlm_aug.output.query import differing_settings, stats, unfinished
    from vlm_aug.shards.layout import OutputDir

    from vlm_aug.output.semantic import ReferenceUnreadable

    out, counted = OutputDir(args.output), []
    result = stats(out, per_shard=not args.no_per_shard, shard_stats=counted)
    result["notes"] = unfinished(out, out.manifest(), counted)  # a run writing the output now, or stopped part way
    if not args.no_semantic:
        try:
            result["semantic"] = semantic_of(args.output, args.reference)
        except ReferenceUnreadable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for note in result["notes"]:
        print(f"vlm-aug: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    lines = format_summary(f"overall ({result['shards']} shard(s))", result["overall"])
    configs = result["configurations"]
    if len(configs) > 1:
        lines.append(f"  made with {len(configs)} configurations (differing in: {', '.join(differing_settings(configs))}):")
        lines += [f"    {fp[:12]}: {c['shards']} shard(s), {c['inputs']} inputs, {c['kept']} kept"
                  for fp, c in configs.items()]
    lines += read_error_lines(result["read_errors"])
    lines += failed_input_lines(result["failed_inputs"])
    lines += format_semantic(result.get("semantic"))
    for name, summary in result.get("per_shard", {}).items():
        lines += [""] + format_summary(f"shard {name}", summary)
    print("\n".join(lines))
    return 0
