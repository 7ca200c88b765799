"""`vlm-aug trace OUT KEY`: print the full history of one sample from the parquet sidecars."""

from __future__ import annotations

import json
import shlex
import sys

SECTIONS = ("source", "generation", "scoring", "decision", "pipeline")


def register(sub) -> None:
    p = sub.add_parser("trace", help="print the full history of one sample (source, prompt, model, scores, decision)")
    p.add_argument("output", help="output directory of a run")
    p.add_argument("key", help="sample key, e.g. s00_0003 (as in KEY.jpg)")
    p.add_argument("--shard", help="only this output shard, e.g. 000012 (keys may repeat across shards)")
    p.add_argument("--json", action="store_true", help="print the raw records as JSON")
    p.set_defaults(func=cmd_trace)


def _lines(node, indent: str = "    "):
    for name, value in node.items():
        if isinstance(value, dict):
            yield f"{indent}{name}:"
            yield from _lines(value, indent + "  ")
        else:
            yield f"{indent}{name}: {json.dumps(value, ensure_ascii=False)}"


def format_record(record: dict, prompt: dict | None) -> str:
    """One record as readable text: captions first, then each provenance section."""
    lines = [f"sample {record['key']} in shard {record['out_shard']}: {record['status']}"
             + (f" ({record['reason']})" if record["reason"] else ""),
             f"  caption (training): {json.dumps(record['caption'], ensure_ascii=False)}",
             f"  caption_orig:       {json.dumps(record['caption_orig'], ensure_ascii=False)}",
             f"  caption_rewrite:    {json.dumps(record['caption_rewrite'], ensure_ascii=False)}"]
    for section in SECTIONS:
        lines.append(f"  {section}:")
        lines.extend(_lines(record[section]))
        if section == "generation" and prompt and prompt.get("sha256") == record[section].get("prompt_sha256"):
            lines.append("    prompt_template (from manifest.json):")
            lines.extend("      | " + line for line in prompt["text"].splitlines())
    return "\n".join(lines)


def _input_key_hint(out, key: str, shard: str | None) -> str:
    """When `key` is an input key written otherwise (dots in a key are written as '_'): the sample's key."""
    import pyarrow.dataset as pads

    found = out.table(["key"], filter_expr=pads.field("source_key") == key, shards=[shard] if shard else None)
    written = sorted({(row["key"], row["out_shard"]) for row in found.to_pylist()})
    if written:
        return ("; dots in keys are written as '_': input key " + repr(key) + " is " + ", ".join(
            f"sample {k!r} in shard {s} (vlm-aug trace {shlex.quote(str(out.path))} {shlex.quote(k)} --shard "
            f"{shlex.quote(s)})" for k, s in written))
    if "." in key.rsplit("/", 1)[-1]:
        return "; dots in keys are written as '_' (an input key a.b is the sample a_b)"
    return ""


def cmd_trace(args) -> int:
    from vlm_aug.output.query import trace
    from vlm_aug.shards.layout import OutputDir

    out = OutputDir(args.output)
    names = out.complete_names()
    if args.shard and args.shard not in names:
        shown = ", ".join(names[:10]) + (f" ... ({len(names)} in all)" if len(names) > 10 else "")
        print(f"error: {args.output} has no complete shard {args.shard!r}; its shards: {shown or 'none'}",
              file=sys.stderr)
        return 2
    records = trace(out, args.key, args.shard)
    if not records:
        where = f"shard {args.shard}" if args.shard else f"any of the {len(names)} complete shard(s)"
        print(f"error: no sample with key {args.key!r} in {where} of {args.output}; "
              "keys are the file stems in the tars (KEY.jpg) and the `key` column of shards/*.parquet"
              + _input_key_hint(out, args.key, args.shard), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(records, indent=1, ensure_ascii=False))
        return 0
    prompt = out.manifest().get("prompt")
    print("\n\n".join(format_record(r, prompt) for r in records))
    return 0
