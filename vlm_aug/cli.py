"""`vlm-aug` command line: `main(argv)` so tests drive it in-process."""

from __future__ import annotations

import argparse
import sys

from vlm_aug.config import ConfigError, load_config
from vlm_aug.models import ModelUnavailable


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", help="input shards: paths, globs, {000..009} patterns or URLs")
    p.add_argument("--output", help="output directory or URL (default from the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set policy.name=rewrite (repeatable)")
    p.add_argument("--executor", choices=["local", "ray"], help="where shards run (default from the config)")
    p.add_argument("--ray-address", help="connect to an existing Ray cluster (else RAY_ADDRESS or a local one)")
    p.add_argument("--overwrite", action="store_true", help="redo shards that are already complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-aug", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="rewrite, score and decide every sample of the input shards")
    run.add_argument("config", help="YAML config, e.g. configs/preview.yaml")
    _add_run_args(run)
    return p


def config_from_args(args) -> "Config":  # noqa: F821
    direct = {"input__paths": args.input, "output__path": args.output, "executor": args.executor,
              "ray__address": args.ray_address}
    if args.no_report:
        direct["output__report"] = False
    return load_config(args.config, args.set, **direct)


def print_summary(manifest: dict, out=sys.stdout) -> None:
    t = manifest["totals"]
    wall = manifest["timings"]["wall_s"]
    processed = len(manifest["shards"]["processed"])
    print(f"\nvlm-aug run {manifest['run_id']}: {processed} shard(s) processed, "
          f"{len(manifest['shards']['skipped_complete'])} already complete, "
          f"{len(manifest['shards']['failed'])} failed, in {wall:.1f} s", file=out)
    print(f"  samples  inputs {t['inputs']}  kept {t['kept']}  rejected {t['rejected']}  error {t['error']}", file=out)
    print(f"  CLIP cosine mean  original {t['mean_clip_orig']}  rewrite {t['mean_clip_rewrite']}", file=out)
    print(f"  output   {manifest['config']['output']['path']}", file=out)


def cmd_run(args) -> int:
    from vlm_aug.run import execute

    config = config_from_args(args)
    result = execute(config, overwrite=args.overwrite, progress=not args.no_progress)
    print_summary(result.manifest)
    if result.failed:
        print(f"error: {len(result.failed)} shard(s) failed: {', '.join(result.failed)}", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ModelUnavailable, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to finish; complete shards are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
