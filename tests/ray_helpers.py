"""Helpers for the Ray tests: configs for the tiny models, finding and killing our own actor processes,
and comparing two output directories sample by sample."""

from __future__ import annotations

import json
import os
import re
import signal
import tarfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from helpers import tiny_args
from vlm_aug.config import load_config

REPO = Path(__file__).resolve().parents[1]
VOLATILE = ("run_id", "time", "worker", "git_sha")  # differ between any two runs by design (a commit between)
# PIL's error text names a BytesIO by memory address, which differs between any two runs,
# local ones included (decode.py's owner is told); the rest of the detail is compared.
ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def tiny_config(vlm_dir, clip_dir, inputs: str, out, *sets: str):
    """A Config for the tiny models, with `KEY=VALUE` overrides after tiny_args'."""
    pairs = tiny_args(vlm_dir, clip_dir)[1::2] + list(sets)
    return load_config(REPO / "configs/preview.yaml", pairs, input__paths=[inputs], output__path=str(out))


def worker_pids(root_pid: int | None = None) -> list[int]:
    """Processes of our ShardWorker actors among the descendants of `root_pid` (default: this process)."""
    found = []
    for proc in psutil.Process(root_pid or os.getpid()).children(recursive=True):
        try:
            title = " ".join(proc.cmdline()) or proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::ShardWorker"):
            found.append(proc.pid)
    return found


def wait_for(predicate, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_a_worker_after_first_shard(out: Path, timeout: float = 240.0) -> int:
    """SIGKILL one ShardWorker process as soon as one shard is committed; -> the pid killed."""
    wait_for(lambda: list((out / "shards").glob("*.stats.json")), timeout, "a first committed shard")
    pid = wait_for(worker_pids, 30, "a ShardWorker process")[0]
    os.kill(pid, signal.SIGKILL)
    return pid


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def strip_volatile(record: dict) -> dict:
    record = json.loads(json.dumps(record))
    for key in VOLATILE:
        record["pipeline"].pop(key, None)
    if record["source"].get("error_detail"):
        record["source"]["error_detail"] = ADDRESS.sub(" at 0x?", record["source"]["error_detail"])
    return record


def shard_view(out: Path, name: str) -> dict:
    """Everything a consumer sees of one output shard, minus run id, times and worker ids."""
    members = read_tar(out / "shards" / f"{name}.tar")
    view = {k: (strip_volatile(json.loads(v)) if k.endswith(".json") else v) for k, v in members.items()}
    rows = pq.read_table(out / "shards" / f"{name}.parquet").to_pylist()
    for row in rows:
        row.pop("run_id")
        row["provenance"] = strip_volatile(json.loads(row["provenance"]))
    stats = json.loads((out / "shards" / f"{name}.stats.json").read_text())
    return {"tar": view, "rows": rows, "counts": stats["counts"], "reasons": stats["reasons"]}
