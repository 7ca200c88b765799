"""`vlm-aug stats OUT`: counts by status and reason and CLIP score quantiles, per shard and overall."""

from __future__ import annotations

import json

from vlm_aug.output.query import SCORES

QUANTILE_NAMES = ("p0", "p10", "p25", "p50", "p75", "p90", "p100")
LABELS = {"clip_orig": "original (before)", "clip_rewrite": "rewrite (after)", "clip_final": "training caption"}


def register(sub) -> None:
    p = sub.add_parser("stats", help="counts by status and reason, CLIP score quantiles, per shard and overall")
    p.add_argument("output", help="output directory of a run")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--no-per-shard", action="store_true", help="overall figures only")
    p.set_defaults(func=cmd_stats)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_summary(title: str, summary: dict) -> list[str]:
    c = summary["counts"]
    lines = [f"{title}: inputs {c['inputs']}  kept {c['kept']}  rejected {c['rejected']}  error {c['error']}"]
    lines += [f"  {reason:<32} {n}" for reason, n in summary["reasons"].items()]
    lines.append(f"  {'CLIP cosine':<20} {'n':>6} {'mean':>8} " + " ".join(f"{q:>8}" for q in QUANTILE_NAMES))
    for name in SCORES:
        d = summary["scores"][name]
        qs = " ".join(f"{_fmt(d['quantiles'].get(q)):>8}" for q in QUANTILE_NAMES)
        lines.append(f"  {LABELS[name]:<20} {d['n']:>6} {_fmt(d['mean']):>8} {qs}")
    return lines


def cmd_stats(args) -> int:
    from vlm_aug.output.query import differing_settings, stats
    from vlm_aug.shards.layout import OutputDir

    result = stats(OutputDir(args.output), per_shard=not args.no_per_shard)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    lines = format_summary(f"overall ({result['shards']} shard(s))", result["overall"])
    configs = result["configurations"]
    if len(configs) > 1:
        lines.append(f"  made with {len(configs)} configurations (differing in: {', '.join(differing_settings(configs))}):")
        lines += [f"    {fp[:12]}: {c['shards']} shard(s), {c['inputs']} inputs, {c['kept']} kept"
                  for fp, c in configs.items()]
    for name, summary in result.get("per_shard", {}).items():
        lines += [""] + format_summary(f"shard {name}", summary)
    print("\n".join(lines))
    return 0
