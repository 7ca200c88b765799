"""Seeds -> mean and spread per arm, paired gains between arms, and the side-by-side table."""

from __future__ import annotations

import statistics
from typing import Optional

HEADLINE = "mean_R@1"
TABLE_METRICS = [("image_to_text_R@1", "i2t R@1"), ("image_to_text_R@5", "i2t R@5"),
                 ("text_to_image_R@1", "t2i R@1"), ("text_to_image_R@5", "t2i R@5"),
                 ("mean_R@1", "mean R@1"), ("zero_shot_top1", "zero-shot"), ("final_loss", "train loss")]
GAIN_METRICS = ["mean_R@1", "mean_R@5", "image_to_text_R@1", "text_to_image_R@1", "zero_shot_top1"]


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 6), "std": round(std, 6), "n": len(values),
            "values": [round(v, 6) for v in values]}


def summarize_arm(runs: list[dict]) -> dict:
    """Per metric over seeds: mean, std, values (runs are one dict of metrics per seed)."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and all(k in r for r in runs)]
    return {k: mean_std([float(r[k]) for r in runs]) for k in keys}


def paired_gain(a_runs: list[dict], b_runs: list[dict], metric: str) -> Optional[dict]:
    """Gain of arm b over arm a, seed by seed: mean, std of the differences, and the verdict
    `mean - 2 std > 0` (the bar the issue sets for calling a gain real)."""
    pairs = [(a[metric], b[metric]) for a, b in zip(a_runs, b_runs) if metric in a and metric in b]
    if not pairs:
        return None
    stats = mean_std([b - a for a, b in pairs])
    stats["mean_minus_2std"] = round(stats["mean"] - 2 * stats["std"], 6)
    stats["significant"] = len(pairs) > 1 and stats["mean_minus_2std"] > 0
    stats["verdict"] = verdict(stats)
    return stats


def verdict(gain: dict) -> str:
    if gain["n"] < 2:
        return "one seed: no verdict"
    if gain["significant"]:
        return "real gain"
    return "real loss" if gain["mean"] + 2 * gain["std"] < 0 else "not significant"


def gains(runs: dict[str, list[dict]], comparisons: list[tuple[str, str]]) -> dict:
    """{"b_vs_a": {metric: gain}} for each (a, b) in `comparisons` whose arms both ran."""
    out = {}
    for a, b in comparisons:
        if a in runs and b in runs:
            out[f"{b}_vs_{a}"] = {m: g for m in GAIN_METRICS if (g := paired_gain(runs[a], runs[b], m))}
    return out


def _cell(stats: Optional[dict]) -> str:
    if not stats:
        return "-"
    return f"{stats['mean']:.3f}±{stats['std']:.3f}" if stats["n"] > 1 else f"{stats['mean']:.3f}"


def format_table(summary: dict[str, dict], gain_table: dict, seeds: int) -> str:
    """Arms side by side (mean±std over seeds), then the gains with their verdict."""
    arms = list(summary)
    metrics = [(k, label) for k, label in TABLE_METRICS if any(k in summary[a] for a in arms)]
    width = max(14, *(len(a) + 2 for a in arms))
    lines = [f"held-out metrics, mean±std over {seeds} seed(s)", f"{'metric':<12}" +
             "".join(f"{a:>{width}}" for a in arms)]
    for key, label in metrics:
        lines.append(f"{label:<12}" + "".join(f"{_cell(summary[a].get(key)):>{width}}" for a in arms))
    for name, per_metric in gain_table.items():
        g = per_metric.get(HEADLINE)
        if g:
            lines.append(f"gain {name} ({HEADLINE}): {g['mean']:+.3f} ± {g['std']:.3f} "
                         f"(mean-2std {g['mean_minus_2std']:+.3f}: {g['verdict']})")
    return "\n".join(lines)
