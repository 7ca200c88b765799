"""The report page: one self-contained HTML file (inline CSS, script, PNG plots, JPEG thumbnails)."""

from __future__ import annotations

import datetime as dt
from html import escape
from importlib import resources
from typing import Optional

from vlm_aug.report.collect import STATUSES, RunData
from vlm_aug.report.gallery import render_gallery
from vlm_aug.report.sections import registered_sections

DIVERSITY_ROWS = [("captions", "captions analysed", "{:,}"), ("vocabulary", "vocabulary (distinct words)", "{:,}"),
                  ("ttr", "type-token ratio (mean per caption)", "{:.3f}"), ("distinct_1", "distinct-1", "{:.4f}"),
                  ("distinct_2", "distinct-2", "{:.4f}"), ("mean_words", "mean length (words)", "{:.1f}"),
                  ("p10_words", "p10 length", "{:.0f}"), ("p50_words", "p50 length", "{:.0f}"),
                  ("p90_words", "p90 length", "{:.0f}")]


def _static(name: str) -> str:
    return resources.files("vlm_aug.report").joinpath("static", name).read_text(encoding="utf-8")


def _fmt(fmt: str, value) -> str:
    return "–" if value is None else fmt.format(value)


def _mean(values) -> Optional[float]:
    return sum(values) / len(values) if len(values) else None


def _tile(value: str, label: str, cls: str = "") -> str:
    return f'<div class="tile {cls}"><div class="v">{value}</div><div class="l">{escape(label)}</div></div>'


def dry_run_shards(configs: dict, manifest: dict) -> tuple[int, int]:
    """-> (shards made by a dry run, shards), from the configurations of the shards present (their own
    settings; else the manifest's config)."""
    configs = {fp: c for fp, c in configs.items() if c.get("shards")}
    if not configs or not all(c.get("settings") for c in configs.values()):
        return (1, 1) if (manifest.get("config") or {}).get("dry_run") else (0, 1)
    dry = sum(c["shards"] for c in configs.values() if (c.get("settings") or {}).get("dry_run"))
    return dry, sum(c["shards"] for c in configs.values())


def read_errors_note(read_errors: dict, shown: int = 10) -> str:
    """The input shards not read to their end, each with why (each shard's stats: read_error)."""
    if not read_errors:
        return ""
    items = "".join(f"<li><code>{escape(name)}</code>: {escape(str(error)[:200])}</li>"
                    for name, error in list(read_errors.items())[:shown])
    more = f"<li>… and {len(read_errors) - shown:,} more (<code>vlm-aug stats</code>)</li>" if len(read_errors) > shown else ""
    return (f'<div class="note warn" id="read-errors"><strong>{len(read_errors):,} input shard(s) could not be read '
            "to their end</strong> (not a tar, an empty file, cut short): the samples before the fault are in the "
            f"output, what followed it is not.<ul>{items}{more}</ul></div>")


def summary_section(data: RunData) -> str:
    m = data.manifest or {}
    dry, shards = dry_run_shards(data.configurations, m)
    all_dry = bool(m) and dry == shards
    tiles = [_tile(f"{data.total_rows:,}", "samples")]
    tiles += [_tile(f"{data.counts.get(s, 0):,}", s, s) for s in STATUSES]
    if not all_dry:
        tiles.append(_tile(f"{data.counts.get('corrected', 0):,}", "kept, original judged wrong by CLIP"))
    if data.counts.get("repaired"):
        tiles.append(_tile(f"{data.counts['repaired']:,}", "kept, repaired (sentences dropped)"))
    if not all_dry:
        tiles += [_tile(_fmt("{:.3f}", _mean(data.clip_orig)), "mean CLIP cosine, original"),
                  _tile(_fmt("{:.3f}", _mean(data.clip_rewrite)), "mean CLIP cosine, rewrite")]
    wall = (m.get("timings") or {}).get("wall_s")
    if wall:
        tiles.append(_tile(f"{wall:,.1f} s", "wall time of the last run"))
    models = m.get("models") or {}
    policy = ((m.get("config") or {}).get("policy")) or {}
    if all_dry:
        facts = ["<strong>a dry run</strong>: every readable sample kept with its original caption; no VLM "
                 "rewrote, no CLIP scored and no policy filtered anything"]
    else:
        facts = [f"VLM <code>{escape(str((models.get('rewrite') or {}).get('model', '?')))}</code>",
                 f"CLIP <code>{escape(str((models.get('score') or {}).get('model', '?')))}</code>",
                 f"prompt <code>{escape(str((m.get('prompt') or {}).get('id', '?')))}</code>",
                 f"policy <code>{escape(str(policy.get('name', '?')))}</code>"]
        if dry:
            facts.append(f"<strong>{dry:,} of {shards:,} shard(s) made by a dry run</strong> (original captions, "
                         "no model, no policy)")
    guards = ((m.get("totals") or {}).get("guards")) or {}
    if guards:
        facts.append("text guards " + ", ".join(f"<code>{escape(k)}</code> {n:,}" for k, n in guards.items()))
    configs = {fp: c for fp, c in data.configurations.items() if c.get("shards")}
    if len(configs) > 1:
        facts.append(f"<strong>{len(configs)} configurations</strong> (" + ", ".join(
            f"<code>{escape(fp[:12])}</code>: {c['shards']} shard(s), {c['inputs']} samples"
            for fp, c in configs.items()) + "; see the card)")
    missing = "" if data.manifest else '<p class="note">manifest.json is missing: model and timing facts unknown.</p>'
    unfinished = "".join(f"<li>{escape(n)}</li>" for n in data.notes)
    unfinished = (f'<div class="note warn" id="unfinished"><strong>This output is not finished</strong>: the figures '
                  f'below are of the shards complete when the report was made.<ul>{unfinished}</ul></div>'
                  if unfinished else "")
    return (f'<section id="summary"><h2>Summary</h2>{unfinished}<div class="tiles">{"".join(tiles)}</div>'
            f'<p class="note">{" · ".join(facts)}</p>{read_errors_note(data.read_errors)}{missing}</section>')


def plots_section(plots: dict[str, str], data: Optional[RunData] = None) -> str:
    titles = {"cosine": "CLIP cosine, originals vs rewrites", "length": "caption length in words, before/after",
              "kept": "kept fraction per shard", "reasons": "reasons"}
    images = "".join(f'<img id="plot-{k}" src="{uri}" alt="{escape(titles[k])}">' for k, uri in plots.items())
    empty = [name for name, inputs, _ in (data.shards if data else []) if not inputs]
    note = (f'<p class="note" id="empty-shards">Kept fraction per shard leaves out {len(empty):,} shard(s) with no '
            "input sample (their input could not be read): " + ", ".join(f"<code>{escape(n)}</code>" for n in empty[:20])
            + (" …" if len(empty) > 20 else "") + ".</p>") if empty else ""
    return f'<section id="plots"><h2>Plots</h2><div class="plots">{images}</div>{note}</section>'


def diversity_section(data: RunData) -> str:
    sets = [("original", data.before.result()), ("rewrite", data.after.result()),
            ("training caption (kept)", data.final.result())]
    head = "".join(f"<th>{escape(name)}</th>" for name, _ in sets)
    rows = "".join(f"<tr><td>{label}</td>" + "".join(f"<td>{_fmt(fmt, r[key])}</td>" for _, r in sets) + "</tr>"
                   for key, label, fmt in DIVERSITY_ROWS)
    rw = data.rewrites.result()
    pct = "{:.1%}"
    rewrite_rows = [("rewrites analysed", f"{rw['rewrites']:,}"),
                    ("identical to the original", f"{rw['identical_to_original']:,} ({_fmt(pct, rw['identical_share'])})"),
                    ("contain the original verbatim", f"{rw['contains_original']:,} ({_fmt(pct, rw['contains_share'])})"),
                    ("near-duplicate rewrites (same words, different images)",
                     f"{rw['duplicate_samples']:,} samples in {rw['duplicate_texts']:,} texts")]
    rewrite_table = "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in rewrite_rows)
    chips = "".join(f"<span>{escape(w)}<b>{n:,}</b></span>" for w, n in rw["top_added_words"]) or "<i>none</i>"
    scope = (f"all {data.text_rows:,} samples" if data.text_rows >= data.total_rows else
             f"a seeded sample of {data.text_rows:,} of {data.total_rows:,} samples (seed {data.options.seed})")
    return f"""<section id="diversity"><h2>Diversity and quality, before vs after</h2><div class="cols">
<table class="div" id="diversity-table"><tr><th></th>{head}</tr>{rows}</table>
<div><table class="div" id="rewrite-table">{rewrite_table}</table>
<p class="note">Most frequent added words (number of rewrites using each; function words left out):</p><div class="chips" id="added">{chips}</div>
</div></div><p class="note">Computed over {scope}. Words are lower-cased letter/digit runs. Type-token ratio is
distinct/total words within a caption, averaged; distinct-n is distinct/total n-grams over the whole set.
Added words are words of a rewrite absent from its original caption.</p></section>"""


def gallery_section(data: RunData, low: Optional[float]) -> str:
    opts = data.options
    drawn = ", ".join(f"{s} {sum(1 for c in data.cards if f'sample:{s}' in c['views'])} of "
                      f"{data.counts.get(s, 0):,}" for s in STATUSES)
    reasons = sorted({c["reason"] for c in data.cards if c.get("reason")}
                     | ({"repaired"} if any(c.get("outcome") == "repaired" for c in data.cards) else set()))
    options = "".join(f'<option value="{escape(r)}">{escape(r)}</option>' for r in reasons)
    status_buttons = "".join(
        f'<button data-status="{s}"{" class=on" if s == "all" else ""}>{s} (<span data-count-status="{s}">0</span>)'
        f"</button>" for s in ("all",) + STATUSES)
    low_note = ("Red sentences score under the rewrite threshold the sample was decided with "
                f"(policy.min_clip_rewrite{f', {low:.3f} in the last run' if low is not None else ''}).")
    return f"""<section id="gallery-section"><h2>Gallery</h2>
<div class="controls"><div class="group"><button data-view="sample" class="on">random sample</button>
<button data-view="lowest">lowest rewrite cosine first</button><button data-view="gain">biggest gain first</button></div>
<div class="group">{status_buttons}</div>
<label>reason <select id="reason"><option value="">any</option>{options}</select></label><span id="shown"></span></div>
<div class="gallery" id="gallery">{render_gallery(data.cards, low)}</div>
<p class="note" id="sampling">Random sample: up to {opts.per_status} samples per status drawn with seed {opts.seed}
({drawn}). Sorted views: the {opts.per_view} lowest rewrite cosines and the {opts.per_view} biggest gains
(rewrite minus original) over the whole run. <mark>Highlighted</mark> words are new in the rewrite. {low_note}</p>
</section>"""


def render_page(data: RunData, plots: dict[str, str], low: Optional[float], semantic: str = "") -> str:
    m = data.manifest or {}
    run_id = escape(str(m.get("run_id", "unknown run")))
    made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>vlm-aug report · {run_id}</title><style>{_static("report.css")}</style></head>
<body><header class="top"><h1>vlm-aug report</h1><div class="meta">run {run_id} · {escape(data.out)} ·
made {made}</div></header><main>
{summary_section(data)}
{registered_sections(data.out)}
{plots_section(plots, data)}
{diversity_section(data)}
{semantic}
{gallery_section(data, low)}
</main><script>{_static("report.js")}</script></body></html>
"""
