"""vlm-aug: rewrite terse captions with a VLM, score with CLIP, write shards with provenance.

`main(argv)` returns an exit code, so tests drive the CLI in-process.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vlm_aug.commands import COMMAND_MODULES
from vlm_aug.config import ConfigError
from vlm_aug.shards.layout import OutputUnwritable
from vlm_aug.stages.models import ModelUnavailable


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-aug", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ModelUnavailable, FileNotFoundError, OutputUnwritable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to finish; complete shards are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
