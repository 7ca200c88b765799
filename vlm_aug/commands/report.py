"""`vlm-aug report OUT`: write OUT/report.html, one self-contained page about a run."""

from __future__ import annotations

import shlex
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("report", help="write OUT/report.html: gallery, plots and diversity figures of a run")
    p.add_argument("out", help="output directory of a `vlm-aug run`")
    p.add_argument("--html", help="where to write the page (default OUT/report.html)")
    p.add_argument("--per-status", type=int, default=48, help="gallery cards drawn per status (default 48)")
    p.add_argument("--per-view", type=int, default=48,
                   help="cards in each sorted view: lowest scores, biggest gains (default 48)")
    p.add_argument("--text-limit", type=int, default=100_000,
                   help="samples whose captions feed the diversity figures (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the gallery and diversity samples")
    p.add_argument("--reference", nargs="+", action="extend", metavar="SHARDS",
                   help="reference caption shards (KEY.txt) or .txt files for the semantic alignment figures")
    p.add_argument("--no-semantic", action="store_true", help="leave out the semantic figures")
    p.set_defaults(func=cmd_report)


def register_lab_sections() -> None:
    """The report's sections that the lab owns (the downstream A/B, when OUT/downstream.json exists)."""
    from vlm_aug.lab.downstream.report_section import downstream_section
    from vlm_aug.report.sections import register_section

    register_section(downstream_section)


def options_from_args(args):
    from vlm_aug.report import ReportOptions

    for name in ("per_status", "per_view", "text_limit"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return ReportOptions(per_status=args.per_status, per_view=args.per_view, text_limit=args.text_limit,
                         seed=args.seed, semantic=not args.no_semantic,
                         reference=tuple(args.reference) if args.reference else None)


def write_run_report(out: str, options=None) -> str | None:
    """Write the report after a run; a failure is reported, never fatal to the finished run."""
    from vlm_aug.report import ReportOptions, write_report

    register_lab_sections()
    start = time.perf_counter()
    try:
        path = write_report(out, options or ReportOptions())
    except Exception as exc:  # noqa: BLE001 - the shards are already committed; say how to retry
        print(f"warning: report not written ({type(exc).__name__}: {exc}); retry with "
              f"`vlm-aug report {shlex.quote(str(out))}`", file=sys.stderr)
        return None
    print(f"  report   {path} ({time.perf_counter() - start:.1f} s)")
    return path


def cmd_report(args) -> int:
    from vlm_aug.report import write_report

    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from vlm_aug.output.semantic import ReferenceUnreadable

    register_lab_sections()
    start = time.perf_counter()
    try:
        path = write_report(args.out, options, args.html)
    except ReferenceUnreadable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0
