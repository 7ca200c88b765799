"""Run open_clip's own trainer (`open_clip_train.main`) on a custom model config.

Runs inside the consumer environment (webdataset 0.2.86, see scripts/setup_consumer_env.sh):

    .venv/consumer/bin/python -m vlm_aug.downstream.runner --model-config M.json --threads 2 \
        -- --model M --train-data ... (any open_clip_train.main argument)

It only registers the model config (open_clip looks configs up by file stem) and caps torch's
threads, then hands every remaining argument to `open_clip_train.main.main` unchanged.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: runner [--model-config FILE] [--threads N] -- OPEN_CLIP_TRAIN_ARGS...", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="vlm_aug.downstream.runner")
    p.add_argument("--model-config", help="open_clip model config JSON; its file stem is the model name")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own)")
    own = p.parse_args(argv[:split])

    import torch

    if own.threads:
        torch.set_num_threads(own.threads)
    import open_clip
    from open_clip_train.main import main as train_main

    if own.model_config:
        open_clip.add_model_config(own.model_config)
    result = train_main(argv[split + 1:])
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(main())
