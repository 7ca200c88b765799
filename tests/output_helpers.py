"""A real run through `main(["run", ...])` for the tests of the output readers."""

from __future__ import annotations

from pathlib import Path

from helpers import make_shards, tiny_args
from vlm_aug.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_pipeline(root: Path, vlm_dir, clip_dir, *sets: str, n_shards: int = 2, per_shard: int = 8) -> Path:
    """Write `n_shards` input shards under `root/in` (sample 3 of shard 0 broken), run, return the output."""
    make_shards(root / "in", n_shards=n_shards, per_shard=per_shard)
    out = root / "out"
    extra = [item for s in sets for item in ("--set", s)]
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(root / "in" / "*.tar"),
            "--output", str(out), "--no-progress", "--no-report", *tiny_args(vlm_dir, clip_dir, *extra)]
    assert main(argv) == 0
    return out
