"""Interrupt the driver for real (SIGTERM, then SIGKILL) in a subprocess, rerun the same command,
and check that every shard is done exactly once with no duplicate keys and no partial output."""

import json
import os
import signal
import subprocess
import sys

import psutil
import pyarrow.parquet as pq
import pytest

from helpers import make_shards, tiny_args
from ray_helpers import REPO, read_tar, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]
N_SHARDS = 10


def command(vlm, clip, inputs, out):
    return [sys.executable, "-m", "vlm_aug", "run", str(REPO / "configs/preview.yaml"), "--input", str(inputs),
            "--output", str(out), "--no-report", *tiny_args(vlm, clip), "--executor", "ray",
            "--set", "ray.dashboard=false"]


def done_shards(out):
    return len(list((out / "shards").glob("*.stats.json"))) if (out / "shards").exists() else 0


def start(cmd, log):
    env = {**os.environ, "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def descendants(proc) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def interrupt_after(proc, out, at_least: int, sig: int) -> tuple[int, list[psutil.Process]]:
    """Send `sig` once `at_least` shards are committed; -> (shards done then, processes it had started)."""
    wait_for(lambda: done_shards(out) >= at_least or proc.poll() is not None, 240, f"{at_least} committed shards")
    assert proc.poll() is None, "the run finished before it could be interrupted: make shards slower"
    family = descendants(proc)
    os.kill(proc.pid, sig)
    return done_shards(out), family


def reap(family: list[psutil.Process], timeout: float) -> list[str]:
    """Wait for the processes a killed run had started; kill (by pid) any left; -> names of those left."""
    gone, alive = psutil.wait_procs(family, timeout=timeout)
    left = []
    for proc in alive:
        try:
            left.append(proc.name())
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return left


def test_interrupted_runs_resume_to_exactly_once(tmp_path, tiny_vlm_dir, tiny_clip_dir):
    make_shards(tmp_path / "in", n_shards=N_SHARDS, per_shard=12)
    out = tmp_path / "out"
    cmd = command(tiny_vlm_dir, tiny_clip_dir, tmp_path / "in/*.tar", out)
    logs = [open(tmp_path / f"run{i}.log", "w+") for i in range(3)]

    first = start(cmd, logs[0])
    done_first, family = interrupt_after(first, out, 1, signal.SIGTERM)
    assert first.wait(60) == 130  # the CLI's "interrupted: rerun the same command" exit
    assert reap(family, 20) == [], "SIGTERM left Ray processes behind"

    second = start(cmd, logs[1])
    done_second, family = interrupt_after(second, out, done_first + 2, signal.SIGKILL)
    second.wait(30)
    left = reap(family, 20)
    assert not any("ShardWorker" in name for name in left), f"an actor outlived its SIGKILLed driver: {left}"

    third = start(cmd, logs[2])
    assert third.wait(300) == 0
    for i, log in enumerate(logs):
        log.seek(0)
        print(f"---- run {i + 1} ----\n{log.read()[-1500:]}")

    shards = out / "shards"
    assert not list(shards.glob("*.tmp-*"))
    all_keys = []
    for i in range(N_SHARDS):
        name = f"{i:06d}"
        stats = json.loads((shards / f"{name}.stats.json").read_text())
        rows = pq.read_table(shards / f"{name}.parquet").to_pylist()
        members = read_tar(shards / f"{name}.tar")
        tar_keys = [m.rsplit(".", 1)[0] for m in members if m.endswith(".txt")]
        assert len(tar_keys) == len(set(tar_keys)) == stats["counts"]["kept"]
        assert len(rows) == stats["counts"]["inputs"] == 12
        all_keys += [r["key"] for r in rows]
    assert len(all_keys) == len(set(all_keys)) == N_SHARDS * 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]["skipped_complete"]) >= done_second >= done_first >= 1
    assert len(manifest["shards"]["processed"]) + len(manifest["shards"]["skipped_complete"]) == N_SHARDS
    assert sorted(json.loads((shards / "sizes.json").read_text())) == [f"{i:06d}.tar" for i in range(N_SHARDS)]
