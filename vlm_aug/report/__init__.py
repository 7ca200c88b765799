"""The per-run HTML report: `write_report(OUT)` reads OUT/shards/*.parquet, the manifest and
the shards' images, and writes OUT/report.html, one page that opens offline."""

from __future__ import annotations

from typing import Optional

import fsspec

from vlm_aug.report.collect import ReportOptions, RunData, collect
from vlm_aug.report.page import render_page
from vlm_aug.report.plots import all_plots
from vlm_aug.report.thumbs import MAX_PIXELS, attach_thumbnails
from vlm_aug.shards.layout import replace_file

__all__ = ["ReportOptions", "build_report", "write_report"]


def _config_value(data: RunData, section: str, name: str):
    return (((data.manifest or {}).get("config") or {}).get(section) or {}).get(name)


def build_report(out: str, options: ReportOptions = ReportOptions()) -> tuple[str, RunData]:
    """-> (page HTML, the collected data it shows)."""
    data = collect(out, options)
    attach_thumbnails(data.cards, max_pixels=_config_value(data, "limits", "max_image_pixels") or MAX_PIXELS)
    low = _config_value(data, "policy", "min_clip_rewrite")
    return render_page(data, all_plots(data), low, semantic_html(out, data, options)), data


def semantic_html(out: str, data: RunData, options: ReportOptions) -> str:
    """The semantic section, from the cache the run wrote (or computed now); a note when it cannot be."""
    if not options.semantic:
        return ""
    from vlm_aug.config import ReportConfig
    from vlm_aug.output.embed import EmbedderUnavailable
    from vlm_aug.output.semantic import compute
    from vlm_aug.report.semantic import semantic_section

    cfg = ReportConfig(**(((data.manifest or {}).get("config") or {}).get("report") or {}))
    if not cfg.semantic and options.reference is None:
        return ""
    try:
        figures = compute(out, cfg, reference=list(options.reference) if options.reference is not None else None)
    except EmbedderUnavailable as exc:
        return semantic_section(None, str(exc))
    return semantic_section(figures)


def write_report(out: str, options: ReportOptions = ReportOptions(), path: Optional[str] = None) -> str:
    """Write the page to `path` (default OUT/report.html) atomically; -> the path written."""
    target = path or f"{out.rstrip('/')}/report.html"
    fs, local = fsspec.core.url_to_fs(target)
    if fs.isdir(local):  # a folder: the page goes in it
        target, local = f"{target.rstrip('/')}/report.html", f"{local.rstrip('/')}/report.html"
    parent = local.rsplit("/", 1)[0] if "/" in local else "."
    if path and not fs.isdir(parent):  # (OUT itself is checked by build_report)
        raise FileNotFoundError(f"cannot write the report to {target}: its folder {parent} does not exist")
    page, _ = build_report(out, options)
    folder, base = local.rsplit("/", 1) if "/" in local else (".", local)
    replace_file(fs, f"{folder}/.{base}.tmp", local, lambda handle: handle.write(page), encoding="utf-8")  # hidden
    return target
