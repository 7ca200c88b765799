"""The report's semantic section: diversity, near-duplicates, redundancy and alignment of the caption
sets (computed by `output/semantic.py`, cached in OUT/semantic.json), with the embedding map."""

from __future__ import annotations

from html import escape
from typing import Optional

from vlm_aug.report.plots import _data_uri, _figure

COLOURS = {"original": "#8a8a8a", "rewrite": "#2b6cb0", "training": "#2f855a", "reference": "#c05621"}
ROWS = [("n", "captions embedded", lambda f: f"{f['n']:,}"),
        ("vendi", "Vendi score (effective distinct meanings)", lambda f: f"{f['diversity']['vendi']:,.1f}"),
        ("vendi_per_caption", "Vendi score per caption", lambda f: _num(f["diversity"]["vendi_per_caption"], "{:.4f}")),
        ("meanings", "distinct meanings (Vendi of cos^16)",
         lambda f: _num(f["diversity"].get("distinct_meanings"), "{:,.1f}")),
        ("mean_cosine", "mean pairwise cosine", lambda f: _num(f["diversity"]["mean_cosine"], "{:.3f}")),
        ("near_dup", "in near-duplicate pairs (other images)",
         lambda f: f"{f['near_duplicates']['captions']:,} ({_num(f['near_duplicates']['share'], '{:.1%}')})"),
        ("redundant", "captions repeating a sentence",
         lambda f: f"{f['redundancy']['redundant']:,} of {f['redundancy']['captions_with_sentences']:,}"),
        ("mauve", "MAUVE to the reference (higher = closer)",
         lambda f: _num((f.get("alignment") or {}).get("mauve"), "{:.3f}")),
        ("frechet", "Fréchet distance to the reference (lower = closer)",
         lambda f: _num((f.get("alignment") or {}).get("frechet"), "{:.4f}"))]


def _num(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _xy(points) -> list[tuple[float, float]]:
    """The (x, y) pairs of one set's map; a point of fewer coordinates (a cache written when one caption gave
    a 1-D map) has y 0, anything else is left out."""
    pairs = []
    for point in points if isinstance(points, list) else []:
        if isinstance(point, (list, tuple)) and point and all(isinstance(v, (int, float)) for v in point):
            pairs.append((float(point[0]), float(point[1]) if len(point) > 1 else 0.0))
    return pairs


def map_plot(points: dict) -> str | None:
    """The embedding map as a data URI; None when there is no point to draw."""
    sets = {name: _xy(xy) for name, xy in (points or {}).items()}
    sets = {name: xy for name, xy in sets.items() if xy}
    if not sets:
        return None
    fig, ax = _figure(5.6, 4.0)
    for name, xy in sets.items():
        xs, ys = zip(*xy)
        ax.scatter(xs, ys, s=6, alpha=0.55, color=COLOURS.get(name, "#444"), label=f"{name} ({len(xy)})")
    ax.set_title("caption embeddings, first two principal components")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=7, markerscale=2)
    return _data_uri(fig)


def semantic_section(figures: Optional[dict], skipped: Optional[str] = None) -> str:
    if figures is None:
        return (f'<section id="semantic"><h2>Semantic figures</h2><p class="note">Not computed: '
                f"{escape(skipped or 'unknown reason')}</p></section>")
    sets = [name for name in ("original", "rewrite", "training", "reference") if name in figures]
    head = "".join(f"<th>{escape(name)}</th>" for name in sets)
    rows = "".join(f"<tr><td>{escape(label)}</td>" + "".join(f"<td>{cell(figures[s])}</td>" for s in sets) + "</tr>"
                   for _, label, cell in ROWS)
    clusters = []
    for name in ("rewrite", "training", "original"):
        for ex in (figures.get(name) or {}).get("near_duplicates", {}).get("examples", [])[:4]:
            items = "".join(f"<li><code>{escape(str(c['id']))}</code> {escape(c['text'])}</li>" for c in ex["captions"])
            clusters.append(f"<div class=\"cluster\"><b>{escape(name)}</b>: {ex['size']} captions<ul>{items}</ul></div>")
        if clusters:
            break
    emb = figures.get("embedder") or {}
    s = figures.get("settings") or {}
    totals = figures.get("totals") or {}
    uri = map_plot(figures["map"]) if isinstance(figures.get("map"), dict) else None
    img = f'<img id="plot-semantic-map" src="{uri}" alt="embedding map">' if uri else ""
    return f"""<section id="semantic"><h2>Semantic figures</h2><div class="cols">
<table class="div" id="semantic-table"><tr><th></th>{head}</tr>{rows}</table><div class="plots">{img}</div></div>
<h3>Near-duplicate clusters (cosine ≥ {s.get('near_duplicate_cosine')}, different images)</h3>
<div id="semantic-clusters">{''.join(clusters) or '<p class="note">none</p>'}</div>
<p class="note">Embedder {escape(str(emb.get('name')))} ({escape(str(emb.get('source')))}, weights sha256
<code>{escape(str(emb.get('sha256', ''))[:16])}…</code>). A seeded sample of at most {s.get('sample')} rows
(seed {s.get('seed')}) of {totals.get('rows', '?')}. Vendi score: exp of the entropy of the eigenvalues of the
cosine kernel, the effective number of distinct meanings (higher = more diverse); a caption set that swaps nouns
in one template scores low here while its distinct-n stays high. Redundancy: two sentences of one caption at cosine ≥
{s.get('redundant_sentence_cosine')}. {('Reference: ' + escape(', '.join(figures.get('reference_files') or [])) + '.') if figures.get('reference_files') else 'No reference given (--reference or report.reference).'}
Computed in {figures.get('seconds')} s after the run.</p></section>"""
