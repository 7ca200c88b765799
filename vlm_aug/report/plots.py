"""The report's figures: matplotlib (Agg) rendered to PNG data URIs, so the page embeds them."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

BEFORE, AFTER, KEPT, BAD = "#8a94a6", "#2f6fdf", "#2e9d5b", "#d0473a"
STATUS_COLORS = {"kept": KEPT, "rejected": "#e08a1e", "error": BAD}


def _figure(width: float = 5.6, height: float = 3.1):
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.25)
    return fig, ax


def _data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def histogram_pair(before, after, title: str, xlabel: str, labels=("original", "rewrite")) -> str:
    """Two overlaid histograms on shared bins."""
    fig, ax = _figure()
    values = list(before) + list(after)
    if not values:
        _empty(ax, "no values")
    else:
        low, high = min(values), max(values)
        bins = 30 if high > low else 1
        span = (low, high) if high > low else (low - 0.5, high + 0.5)
        for data, label, color in ((before, labels[0], BEFORE), (after, labels[1], AFTER)):
            if len(data):
                ax.hist(list(data), bins=bins, range=span, alpha=0.6, color=color, label=f"{label} (n={len(data)})")
        ax.legend(frameon=False, fontsize=8)
        ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    return _data_uri(fig)


def kept_per_shard(shards: list[tuple[str, int, int]]) -> str:
    """Kept fraction per shard: bars while readable, a line for many shards. A shard with no input sample
    (its input could not be read) has no fraction: it is left out (the page names such shards)."""
    fig, ax = _figure()
    shards = [s for s in shards if s[1]]
    if not shards:
        _empty(ax, "no shard with input samples")
    else:
        fractions = [kept / inputs for _, inputs, kept in shards]
        positions = range(len(shards))
        if len(shards) <= 40:
            bars = ax.bar(positions, fractions, color=KEPT)
            ax.bar_label(bars, labels=[f"{f:.0%}" for f in fractions], fontsize=7, padding=1)
            ax.set_xticks(list(positions), [name for name, _, _ in shards], rotation=60, fontsize=7)
        else:
            ax.plot(list(positions), fractions, color=KEPT, linewidth=1)
            ax.set_xlabel("shard index (sorted by name)")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("kept / inputs")
    ax.set_title("Kept fraction per shard", fontsize=10)
    return _data_uri(fig)


def reasons_bar(reasons: dict[str, int]) -> str:
    """Horizontal bars, one per `status:reason`, coloured by status."""
    items = sorted(reasons.items(), key=lambda kv: kv[1])
    fig, ax = _figure(height=max(2.2, 0.35 * len(items) + 1.0))
    if not items:
        _empty(ax, "no rejections or errors")
    else:
        colors = [STATUS_COLORS.get(name.split(":", 1)[0], BEFORE) for name, _ in items]
        ax.barh([name for name, _ in items], [n for _, n in items], color=colors)
        ax.set_xlabel("samples")
        ax.grid(axis="x", alpha=0.25)
        for y, (_, n) in enumerate(items):
            ax.text(n, y, f" {n}", va="center", fontsize=8)
    ax.set_title("Reasons (status:reason)", fontsize=10)
    return _data_uri(fig)


def all_plots(data) -> dict[str, str]:
    """Figure name -> data URI for a collected run."""
    return {
        "cosine": histogram_pair(data.clip_orig, data.clip_rewrite, "CLIP cosine with the image", "cosine"),
        "length": histogram_pair(data.before.lengths, data.after.lengths, "Caption length", "words"),
        "kept": kept_per_shard(data.shards),
        "reasons": reasons_bar(dict(data.reasons)),
    }
