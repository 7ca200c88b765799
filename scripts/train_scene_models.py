"""Train the shipped scene models: the Idefics3 scene VLM and the open_clip scene CLIP.

    python scripts/train_scene_models.py --models vlm &     # one process per core, at once:
    python scripts/train_scene_models.py --models clip      # ~25 min wall on an idle 2-core CPU

Budgets are wall-clock minutes (defaults 21 and 16), so the number of steps, and the exact
weights, depend on the machine's speed; the seed fixes the rest. Measured on an idle 2-core
machine with both running, 1 thread each: 0.94 s/step (VLM), 0.60 s/step (CLIP), so the
defaults give ~1,340 and ~1,600 steps, plus ~3 min of rendering training scenes each. The
shipped models: 1,298 and 1,477 steps, trained with --vlm-minutes 45 / --clip-minutes 40 on a
machine shared with other jobs (load 6-13).
Each model goes to OUT/scene_vlm and OUT/scene_clip with a `training.json` (steps, time, seed,
loss curve, final metrics on fresh scenes whose seed is never used in training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

EVAL_SEED = 987654  # fresh scenes: training seeds are 0..N and string-derived


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("vlm_aug/assets"))
    parser.add_argument("--models", choices=["vlm", "clip", "both"], default="both")
    parser.add_argument("--vlm-minutes", type=float, default=21.0)
    parser.add_argument("--clip-minutes", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-n", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)  # 2 threads beside another process ran slower
    return parser.parse_args(argv)


def write_record(out_dir: Path, record: dict) -> None:
    (out_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def run_model(args, name: str) -> None:
    """Train one scene model, save it with its training.json, then evaluate it on fresh scenes."""
    from vlm_aug.lab.scenes.train_clip import train_clip
    from vlm_aug.lab.scenes.train_vlm import train_vlm

    train, minutes = (train_vlm, args.vlm_minutes) if name == "vlm" else (train_clip, args.clip_minutes)
    out_dir = args.out / f"scene_{name}"
    record = train(out_dir, minutes=minutes, seed=args.seed, log=log)
    record["command"] = " ".join(["python", "scripts/train_scene_models.py", *sys.argv[1:]])
    write_record(out_dir, record)
    from vlm_aug.lab.scenes.evaluate import clip_metrics, vlm_accuracy  # imported late: written while training

    evaluate = vlm_accuracy if name == "vlm" else clip_metrics
    record["final_metrics"] = evaluate(out_dir, n=args.eval_n, seed=EVAL_SEED)
    write_record(out_dir, record)
    log(f"{name} done: {record['final_metrics']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.models in ("vlm", "both"):
        run_model(args, "vlm")
    if args.models in ("clip", "both"):
        run_model(args, "clip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
