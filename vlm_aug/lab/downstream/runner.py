"""Run open_clip's own trainer (`open_clip_train.main`) on a custom model config.

Runs inside the consumer environment (webdataset 0.2.86, see scripts/setup_consumer_env.sh):

    .venv/consumer/bin/python -m vlm_aug.lab.downstream.runner --model-config M.json --threads 2 \
        -- --model M --train-data ... (any open_clip_train.main argument)

It registers the model config (open_clip looks configs up by file stem), caps torch's threads and
seeds the trainer's sample shuffle buffer from `--seed` (see `seed_sample_shuffle`), then hands every
remaining argument to `open_clip_train.main.main` unchanged.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys


def seed_sample_shuffle(seed: int) -> None:
    """Make webdataset's `shuffle` stage draw from `seed` instead of the clock.

    open_clip_train builds its training pipeline with `wds.shuffle(bufsize, initial)` and no rng, and
    webdataset then seeds it from `os.getpid() + time.time()`: the same `--seed` gave a different sample
    order on every run, so two arms trained "with the same seed" were not paired in data order. The
    stage is looked up as `webdataset.shuffle` when the pipeline is built, so replacing that attribute
    before training is enough; an explicit rng passed by a caller is kept. Each shuffle stage built in
    this process gets its own stream (seed, stage number).
    """
    import webdataset
    from webdataset.filters import _shuffle, pipelinefilter

    stages = itertools.count()

    def seeded_shuffle(data, bufsize=1000, initial=100, rng=None, **_):
        rng = rng if rng is not None else random.Random(f"vlm_aug-shuffle/{seed}/{next(stages)}")
        return _shuffle(data, bufsize, initial, rng)

    webdataset.shuffle = pipelinefilter(seeded_shuffle)


def _seed_of(train_argv: list[str]) -> int:
    for i, arg in enumerate(train_argv):
        if arg == "--seed" and i + 1 < len(train_argv):
            return int(train_argv[i + 1])
        if arg.startswith("--seed="):
            return int(arg.split("=", 1)[1])
    return 0  # open_clip_train's own default


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: runner [--model-config FILE] [--threads N] -- OPEN_CLIP_TRAIN_ARGS...", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="vlm_aug.lab.downstream.runner")
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
    train_argv = argv[split + 1:]
    seed_sample_shuffle(_seed_of(train_argv))
    result = train_main(train_argv)
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(main())
