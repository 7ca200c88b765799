"""The report's "Downstream A/B" section, drawn from OUT/downstream.json when it exists."""

from __future__ import annotations

import json
from html import escape

from vlm_aug.lab.downstream import DOWNSTREAM_JSON
from vlm_aug.lab.downstream.aggregate import HEADLINE, TABLE_METRICS


def _read(out: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(out)
    path = f"{root.rstrip('/')}/{DOWNSTREAM_JSON}"
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "r") as handle:
            return json.load(handle)
    except (OSError, ValueError):  # a broken file must not break the report
        return {"broken": True}


def _cell(stats) -> str:
    if not stats:
        return "–"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}" if stats.get("n", 1) > 1 else f"{stats['mean']:.3f}"


def downstream_section(out: str) -> str:
    """HTML for the A/B (arms side by side, gains with verdict), or '' without downstream.json."""
    data = _read(out)
    if data is None:
        return ""
    if data.get("broken") or "summary" not in data:
        return ('<section id="downstream"><h2>Downstream A/B</h2><p class="note">'
                f'{DOWNSTREAM_JSON} is unreadable; rerun <code>vlm-aug eval-downstream</code>.</p></section>')
    arms = list(data["summary"])
    head = "".join(f"<th>{escape(a)}</th>" for a in arms)
    rows = "".join(
        f"<tr><td>{escape(label)}</td>" + "".join(f"<td>{_cell(data['summary'][a].get(key))}</td>" for a in arms)
        + "</tr>" for key, label in TABLE_METRICS if any(key in data["summary"][a] for a in arms))
    gains = []
    for name, per_metric in data.get("gains", {}).items():
        g = per_metric.get(HEADLINE)
        if g:
            gains.append(f"<li><code>{escape(name)}</code>: {g['mean']:+.3f} ± {g['std']:.3f} "
                         f"(mean − 2 std {g['mean_minus_2std']:+.3f}: {escape(g['verdict'])})</li>")
    train, held = data.get("train", {}), data.get("heldout", {})
    note = (f"{escape(str(data.get('model', {}).get('name', '?')))} trained by open_clip_train, "
            f"{train.get('steps', '?')} steps × batch {train.get('batch_size', '?')} per run, seeds {data.get('seeds')}; "
            f"held-out {held.get('samples', '?')} samples. Gains are paired by seed on {HEADLINE}.")
    return (f'<section id="downstream"><h2>Downstream A/B</h2><table class="div"><tr><th>metric</th>{head}</tr>'
            f'{rows}</table><ul>{"".join(gains)}</ul><p class="note">{note}</p></section>')
