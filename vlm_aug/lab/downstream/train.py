"""Train one arm with open_clip's own trainer (open_clip_train.main) in a subprocess; read its logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from vlm_aug.lab.downstream import DownstreamError
from vlm_aug.lab.downstream.arms import Arm
from vlm_aug.lab.downstream.models import ModelChoice

TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) .*?LR: ([\d.e-]+) .*?Loss: ([\d.naif]+) \(")
WDS_MAX = (0, 2, 86)  # open_clip_train's webdataset pin


@dataclass(frozen=True)
class TrainSpec:
    """Everything that is the same for every arm and seed."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 30
    wd: float = 0.1
    threads: int = 2
    workers: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    pretrained: Optional[str] = None
    log_every: int = 10

    def describe(self) -> dict:
        return asdict(self)


def trainer_python(explicit: Optional[str] = None) -> str:
    """A Python with webdataset<=0.2.86: `explicit`, this one if it qualifies, or .venv/consumer."""
    if explicit:
        return explicit
    try:
        import importlib.metadata as md

        version = tuple(int(x) for x in md.version("webdataset").split(".")[:3])
        if version <= WDS_MAX:
            return sys.executable
    except Exception:  # not installed or an odd version string: look for the consumer env
        pass
    consumer = Path(sys.prefix) / "consumer" / "bin" / "python"
    if consumer.exists():
        return str(consumer)
    raise DownstreamError("open_clip_train needs webdataset<=0.2.86, which this environment does not have: "
                          "run scripts/setup_consumer_env.sh (creates .venv/consumer) or pass --trainer-python")


def trainer_argv(spec: TrainSpec, model: ModelChoice, arm: Arm, seed: int, logs: Path, name: str,
                 val_urls: Optional[list[str]] = None) -> list[str]:
    """open_clip_train arguments: resampled shards and a fixed sample count, so every arm and seed
    runs exactly `spec.steps` steps whatever its number of samples."""
    argv = ["--model", model.name, "--train-data", "::".join(arm.urls), "--dataset-type", "webdataset",
            "--dataset-resampled", "--train-num-samples", str(spec.steps * spec.batch_size),
            "--batch-size", str(spec.batch_size), "--epochs", "1", "--lr", str(spec.lr),
            "--warmup", str(spec.warmup), "--wd", str(spec.wd), "--workers", str(spec.workers),
            "--precision", spec.precision, "--device", spec.device, "--seed", str(seed),
            "--logs", str(logs), "--name", name, "--log-every-n-steps", str(spec.log_every)]
    if spec.pretrained:
        argv += ["--pretrained", spec.pretrained]
    if val_urls:
        argv += ["--val-data", "::".join(val_urls)]
    return argv


def parse_train_log(path: Path, batch_size: int) -> dict:
    """Steps, loss curve and final loss/LR from the trainer's own out.log."""
    curve = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = TRAIN_LINE.search(line)
        if match:
            seen, lr, loss = int(match.group(2)), float(match.group(4)), float(match.group(5))
            curve.append([seen // batch_size, round(loss, 5), lr])
    if not curve:
        raise DownstreamError(f"{path} has no training line: the trainer did not train (see stdout.txt beside it)")
    return {"steps": curve[-1][0], "final_loss": curve[-1][1], "first_loss": curve[0][1],
            "loss_curve": [[s, loss] for s, loss, _ in curve]}


def read_trainer_val(path: Path) -> Optional[dict]:
    """The trainer's own held-out metrics (results.jsonl, last line), if it evaluated."""
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def run_training(spec: TrainSpec, model: ModelChoice, arm: Arm, seed: int, logs: Path,
                 python: str, val_urls: Optional[list[str]] = None) -> dict:
    """Train `arm` with `seed`; return the checkpoint path and what the trainer's logs say."""
    name = f"{arm.name}-seed{seed}"
    run_dir = logs / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # open_clip_train refuses an existing experiment name
    cmd = [python, "-m", "vlm_aug.lab.downstream.runner", "--threads", str(spec.threads)]
    if model.config_path:
        cmd += ["--model-config", model.config_path]
    cmd += ["--", *trainer_argv(spec, model, arm, seed, logs, name, val_urls)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "TORCHDYNAMO_VERBOSE": "0"}
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = round(time.time() - start, 2)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stdout.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    checkpoint = run_dir / "checkpoints" / "epoch_1.pt"
    if proc.returncode != 0 or not checkpoint.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise DownstreamError(f"open_clip_train failed for arm {arm.name!r} seed {seed} (exit {proc.returncode}); "
                              f"full output in {run_dir / 'stdout.txt'}; last lines:\n{tail}")
    record = parse_train_log(run_dir / "out.log", spec.batch_size)
    record.update(wall_s=wall, checkpoint=str(checkpoint), log=str(run_dir / "out.log"),
                  trainer_val=read_trainer_val(run_dir / "checkpoints" / "results.jsonl"))
    return record
