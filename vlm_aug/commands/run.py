"""`vlm-aug run CONFIG`: rewrite, score and decide every sample of the input shards."""

from __future__ import annotations

import argparse
import sys

from vlm_aug.config import load_config


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", action="extend", help="input shards: paths, globs, {000..009} patterns or URLs (repeatable)")
    p.add_argument("--output", help="output directory or URL (default from the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set policy.name=rewrite (repeatable)")
    p.add_argument("--executor", choices=["auto", "local", "ray"], help="where shards run (default from the config: auto)")
    p.add_argument("--ray-address", help="connect to an existing Ray cluster (else RAY_ADDRESS or a local one)")
    p.add_argument("--overwrite", action="store_true", help="redo shards that are already complete")
    p.add_argument("--allow-config-change", action="store_true",
                   help="append to an output made with other settings; each shard keeps its own (see its card)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    p.add_argument("--no-model", action="store_true",
                   help="dry run: no models; decode images and write full output with the original captions")


def register(sub) -> None:
    p = sub.add_parser("run", help="rewrite, score and decide every sample of the input shards")
    p.add_argument("config", help="YAML config, e.g. configs/preview.yaml")
    add_run_args(p)
    p.set_defaults(func=cmd_run)


def config_from_args(args):
    direct = {"input__paths": args.input, "output__path": args.output, "executor": args.executor,
              "ray__address": args.ray_address}
    if args.no_report:
        direct["output__report"] = False
    if getattr(args, "no_model", False):
        direct["dry_run"] = True
    if getattr(args, "allow_config_change", False):
        direct["output__allow_config_change"] = True
    return load_config(args.config, args.set, **direct)


def _throughput(manifest: dict) -> tuple[int, int]:
    """(samples, new tokens) of the shards this invocation processed, from their stats files."""
    from vlm_aug.shards.layout import OutputDir
    from vlm_aug.shards.read import shard_name

    done = {shard_name(url) for url in manifest["shards"]["processed"]}
    if not done:  # nothing processed: no stats file to read (a rerun of 100,000 complete shards read them all)
        return 0, 0
    stats = [s for s in OutputDir(manifest["config"]["output"]["path"]).all_stats() if s["shard"] in done]
    return (sum(s["counts"]["inputs"] for s in stats),
            sum(s.get("scores", {}).get("new_tokens", 0) for s in stats))


def print_summary(manifest: dict, out=None) -> None:
    """A short table: counts by status, mean CLIP cosine before/after, throughput."""
    out = out or sys.stdout
    t = manifest["totals"]
    wall = manifest["timings"]["wall_s"]
    processed = len(manifest["shards"]["processed"])
    print(f"\nvlm-aug run {manifest['run_id']}: {processed} shard(s) processed, "
          f"{len(manifest['shards']['skipped_complete'])} already complete, "
          f"{len(manifest['shards']['failed'])} failed, in {wall:.1f} s", file=out)
    print(f"  {'status':<10}{'samples':>10}{'share':>9}", file=out)
    for status in ("kept", "rejected", "error"):
        share = f"{t[status] / t['inputs']:.1%}" if t["inputs"] else "-"
        print(f"  {status:<10}{t[status]:>10,}{share:>9}", file=out)
    print(f"  {'total':<10}{t['inputs']:>10,}", file=out)
    reasons = t.get("reasons") or {}
    if reasons:
        shown = ", ".join(f"{k} {n:,}" for k, n in list(reasons.items())[:4])
        more = f" and {len(reasons) - 4} more" if len(reasons) > 4 else ""
        print(f"  reasons: {shown}{more} (the parquet's `reason` column; vlm-aug stats OUT)", file=out)
    if t.get("corrected"):
        print(f"  of the kept, {t['corrected']:,} original caption(s) scored below policy.min_clip_orig and "
              "were replaced by the rewrite (decision.orig_passed = false)", file=out)
    if t.get("repaired"):
        print(f"  of the kept, {t['repaired']:,} rewrite(s) were repaired: {t['sentences_dropped']:,} sentence(s) under "
              "policy.repair.drop_sentences_below dropped (decision.outcome = repaired)", file=out)
    if t.get("guards"):
        print("  text guards: " + ", ".join(f"{k} {n:,}" for k, n in t["guards"].items())
              + " (rewrites cut or stripped before scoring; docs/guards.md)", file=out)
    before, after = t["mean_clip_orig"], t["mean_clip_rewrite"]
    gain = f"  ({after - before:+.3f})" if before is not None and after is not None else ""
    print(f"  CLIP cosine mean   original {before}   rewrite {after}{gain}", file=out)
    samples, tokens = _throughput(manifest)
    rate = f"{samples / wall:.2f} samples/s, {tokens / wall:.0f} new tokens/s" if samples and wall > 0 else "-"
    print(f"  throughput {rate} ({samples:,} samples processed in {wall:.1f} s)", file=out)
    print(f"  output   {manifest['config']['output']['path']}", file=out)


# what to look at when every sample of a run is an error for one input-side reason
_HINTS = {"missing_caption": "is the caption in another member? input.caption_key names it: another extension "
                             "(caption, orig.txt) or a field of the json (json:caption)",
          "missing_image": "are the images under other extensions? input.image_exts lists the ones read",
          "bad_json": "the json members are not valid UTF-8 JSON objects",
          "duplicate_key": "are a sample's members next to each other in the tar? webdataset groups adjacent "
                           "members only; re-create the tar with its members sorted by name"}


def nothing_kept_warning(totals: dict, err=None) -> None:
    """A run in which every sample is an error wrote nothing to train on: say so, and its commonest reason."""
    if not totals["inputs"] or totals["error"] != totals["inputs"]:
        return
    reason, n = next(iter(totals.get("reasons", {}).items()), ("error:?", 0))
    hint = _HINTS.get(reason.split(":", 1)[-1])
    print(f"warning: every sample ({totals['inputs']:,}) is an error, so the output holds nothing to train on; "
          f"the commonest reason is {reason} ({n:,})" + (f": {hint}" if hint else ""), file=err or sys.stderr)


def execute_and_report(config, overwrite: bool, progress: bool) -> int:
    from vlm_aug.commands.report import write_run_report
    from vlm_aug.run import execute

    result = execute(config, overwrite=overwrite, progress=progress)
    print_summary(result.manifest)
    if config.output.report:
        write_run_report(config.output.path)
    nothing_kept_warning(result.manifest["totals"])
    read_errors = result.manifest["shards"]["read_errors"]
    if read_errors:
        from vlm_aug.commands.stats import read_error_lines

        print("warning: " + "\n".join(read_error_lines(read_errors)).strip(), file=sys.stderr)
    if result.failed:
        print(f"error: {len(result.failed)} shard(s) failed (not written: a rerun redoes them):", file=sys.stderr)
        for failure in result.manifest["shards"]["failed"][:10]:
            print(f"  {failure['url']}: {failure['error'].splitlines()[-1][:300]}", file=sys.stderr)
        if len(result.failed) > 10:
            print(f"  ... and {len(result.failed) - 10} more (manifest.json: shards.failed)", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    return execute_and_report(config_from_args(args), args.overwrite, not args.no_progress)
