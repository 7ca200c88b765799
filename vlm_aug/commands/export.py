"""`vlm-aug export OUT DEST --format llava|messages`: kept samples for VLM fine-tuning."""

from __future__ import annotations

import sys


def register(sub) -> None:
    from vlm_aug.output.export import DEFAULT_INSTRUCTION, FORMATS

    p = sub.add_parser("export", help="export kept samples as LLaVA json + images or HF messages + images")
    p.add_argument("output", help="output directory of a run")
    p.add_argument("dest", help="new (or empty) directory to write the export to")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="llava: llava.json + images/; messages: data/*.parquet with messages + images")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION,
                   help=f"the user turn before each caption (default: {DEFAULT_INSTRUCTION!r})")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from vlm_aug.output.export import completeness, export

    try:
        notes = completeness(args.output)  # of the output as the export finds it (a run may finish meanwhile)
        n = export(args.output, args.dest, args.format, args.instruction)
    except (OSError, ValueError) as exc:  # FileExistsError, a destination below a file, a damaged shard
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"vlm-aug: note: {note}", file=sys.stderr)
    print(f"exported {n} kept sample(s) from {args.output} to {args.dest} ({args.format})")
    return 0
