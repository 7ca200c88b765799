"""`vlm-aug demo`: scene shards through the shipped scene models, offline, in a few minutes."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
import uuid
from pathlib import Path

from vlm_aug.commands.run import execute_and_report
from vlm_aug.config import ConfigError, load_config
from vlm_aug.paths import configs_dir
from vlm_aug.shards.layout import OutputDir
from vlm_aug.shards.lease import Lease, OutputBusy


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _check_demo_folder(root: Path, inputs: Path, out: Path) -> None:
    """The demo replaces ROOT/input and ROOT/output: only when they are what an earlier demo wrote
    (scene shards; a vlm-aug output), never a folder of the user's that happens to have those names."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"demo --output {root} is a file: give a folder (it will hold input/ and output/)")
    if inputs.exists() and any(not re.fullmatch(r"\d{6}\.tar", p.name) for p in inputs.iterdir()):
        raise ConfigError(f"{inputs} holds files the demo did not write; the demo replaces this folder: "
                          "choose another --output")
    foreign = OutputDir(str(out), must_exist=False).foreign_file()
    if foreign:
        raise ConfigError(f"{out} holds files vlm-aug did not write (e.g. {foreign}); the demo replaces this folder: "
                          "choose another --output")


def register(sub) -> None:
    p = sub.add_parser("demo", help="generate scene shards and run the full pipeline on them, offline")
    p.add_argument("--output", default="demo_out", help="where to write inputs and outputs (default demo_out)")
    p.add_argument("--shards", type=_positive, default=4, help="number of scene shards (default 4)")
    p.add_argument("--per-shard", type=_positive, default=64, help="samples per shard (default 64)")
    p.add_argument("--wrong-fraction", type=_fraction, default=0.2,
                   help="share of deliberately wrong terse captions (default 0.2)")
    p.add_argument("--seed", type=int, default=2026, help="scene seed (default 2026)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--executor", choices=["auto", "local", "ray"], help="where shards run (default auto: local for the demo's small input)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from vlm_aug.lab.scenes import write_scene_shards

    if "://" in args.output or "::" in args.output:  # Path() took s3://b/x for a local folder ./s3:/b/x
        print(f"error: the demo writes to a local folder, and {args.output} is a URL: give a local folder "
              "(`vlm-aug run` reads and writes s3:// and other fsspec URLs)", file=sys.stderr)
        return 2
    root = Path(args.output)
    inputs, out = root / "input", root / "output"
    overrides = list(args.set) + [f"input.paths=['{inputs}/*.tar']", f"output.path={out}"]
    if args.executor:
        overrides.append(f"executor={args.executor}")
    if args.no_report:
        overrides.append("output.report=false")
    config = load_config(configs_dir() / "demo.yaml", overrides)  # validate before writing anything
    _check_demo_folder(root, inputs, out)
    root.mkdir(parents=True, exist_ok=True)
    # the whole folder for the whole demo: a second demo here stops, naming this one, before it removes
    # anything (it removed input/ and output/ under a running demo); a run writing output/ stops it too
    with Lease(OutputDir(str(root), must_exist=False), f"demo-{uuid.uuid4().hex[:8]}"):
        busy = Lease(OutputDir(str(out), must_exist=False), "demo-check").busy()
        if busy:
            raise OutputBusy(busy)
        for stale in (inputs, out):
            shutil.rmtree(stale, ignore_errors=True)
        write_scene_shards(inputs, args.shards, args.per_shard, seed=args.seed, wrong_fraction=args.wrong_fraction)
        print(f"wrote {args.shards} scene shards x {args.per_shard} samples "
              f"({args.wrong_fraction:.0%} with a wrong terse caption) to {inputs}")
        code = execute_and_report(config, overwrite=True, progress=not args.no_progress)
    print(f"\nlook at: {out}/report.html (gallery, plots), {out}/shards/ (new shards), "
          f"{out}/manifest.json (the run)\n"
          f"  trace one sample: vlm-aug trace {shlex.quote(str(out))} 000000_000000")
    return code
