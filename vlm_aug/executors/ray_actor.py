"""The long-lived Ray worker: holds the models once, turns shards into committed output shards.

It is a plain class (no Ray import at module level); `executors.ray` wraps it with
`ray.remote`. The actor runs with several threads (one per shard in flight): while
one shard's batches go through the models, the others read, decode and write, so
the accelerator does not wait on I/O. One lock keeps the models to one batch at a
time, and the time it is held is the accelerator's busy time.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time

from vlm_aug.config import Config
from vlm_aug.malloc import tune_malloc
from vlm_aug.pipeline import ShardProcessor, build_stages
from vlm_aug.record import RunContext, package_versions


class ModelMeter:
    """Counts how long the models were busy, and how many shards were open at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.busy_s = 0.0
        self.open_shards = self.max_open_shards = 0


class LockedStage:
    """A model stage's `process_batch` holds the actor's model lock; a stage without a model (decide)
    runs beside it. The time a shard's thread waits for the lock is kept apart (`take_wait_s`): it
    was counted as the stage's own time before, which made `decide` look like 9.7 s of work under Ray
    when it was waiting for another shard's generate to let go of the lock."""

    def __init__(self, stage, meter: ModelMeter):
        self.stage, self.meter = stage, meter
        self.name, self.section, self.resources = stage.name, stage.section, stage.resources
        self.uses_model = getattr(stage, "uses_model", True)
        if hasattr(stage, "engine"):  # the worker sizes its batches by it (a serving engine: a whole window)
            self.engine = stage.engine
        self.waits = threading.local()  # per shard thread: seconds waited for the lock since the last take

    def setup(self) -> None:
        self.stage.setup()

    def describe(self) -> dict:
        return self.stage.describe()

    def prepare(self, samples, pool=None) -> None:
        """Host work ahead of the model: no lock (the model does not run in it)."""
        prepare = getattr(self.stage, "prepare", None)
        if prepare is not None:
            prepare(samples, pool)

    def take_timings(self) -> dict[str, float]:
        """The stage's named parts of its time (`RewriteStage.take_timings`)."""
        take = getattr(self.stage, "take_timings", None)
        return take() if take is not None else {}

    def take_wait_s(self) -> float:
        """Seconds this thread waited for the model lock since the last call."""
        waited, self.waits.s = getattr(self.waits, "s", 0.0), 0.0
        return waited

    def process_batch(self, samples) -> None:
        if not self.uses_model:
            return self.stage.process_batch(samples)
        asked = time.perf_counter()
        with self.meter.lock:
            start = time.perf_counter()
            self.waits.s = getattr(self.waits, "s", 0.0) + start - asked
            try:
                self.stage.process_batch(samples)
            finally:
                self.meter.busy_s += time.perf_counter() - start


class ShardWorker:
    """One model copy; `process(url)` may run in several threads at once (one per shard)."""

    def __init__(self, config: Config, run: RunContext, slot: int, torch_threads: int, cpus: float | None = None):
        """`cpus`: the CPUs Ray reserved for this actor (`ray.num_cpus_per_actor`), which size its decode
        threads when `input.decode_workers` is unset (not the node's count)."""
        import torch

        # the models run in one of Ray's threads, a glibc arena of its own: without this an actor
        # faulted 250-470 thousand pages in on 2,048 scene samples, with it 115-175 (vlm_aug/malloc.py)
        self.malloc = tune_malloc(config.tune_malloc)
        torch.set_num_threads(torch_threads)
        self.slot, self.torch_threads = slot, torch_threads
        self.versions = package_versions()
        self.identity = f"ray:{slot}@{socket.gethostname()}:{os.getpid()}"
        self.meter = ModelMeter()
        stages = [LockedStage(stage, self.meter) for stage in build_stages(config)]
        self.processor = ShardProcessor(config, dataclasses.replace(run, worker=self.identity), stages, cores=cpus)
        self.ready_at: float | None = None
        self.shards = self.samples = self.tokens = 0
        self.count_lock = threading.Lock()

    def ping(self) -> dict:
        """Answers once the actor is placed and constructed (models not loaded yet)."""
        import ray

        return {"worker": self.identity, "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "gpu_ids": ray.get_gpu_ids(), "torch_threads": self.torch_threads}

    def setup(self) -> dict:
        """Load the models; -> what the stages describe (for the run manifest)."""
        start = time.perf_counter()
        self.processor.setup()
        self.ready_at, self.ready_cpu = time.perf_counter(), _process_cpu_s()
        run = self.processor.run
        return {"sections": run.sections, "models": run.models, "setup_s": round(self.ready_at - start, 3),
                "settings": run.settings, "fingerprint": run.fingerprint}

    def process(self, url: str) -> dict:
        with self.count_lock:
            self.meter.open_shards += 1
            self.meter.max_open_shards = max(self.meter.max_open_shards, self.meter.open_shards)
        try:
            stats = self.processor.process(url)
        finally:
            with self.count_lock:
                self.meter.open_shards -= 1
        with self.count_lock:
            self.shards += 1
            self.samples += stats["counts"]["inputs"]
            self.tokens += stats.get("scores", {}).get("new_tokens", 0)
        return {**stats, "worker": self.identity}

    def metrics(self) -> dict:
        """Throughput and model idle time since the models were loaded."""
        alive = time.perf_counter() - self.ready_at if self.ready_at else 0.0
        busy = self.meter.busy_s
        return {"worker": self.identity, "shards": self.shards, "samples": self.samples, "tokens": self.tokens,
                "alive_s": round(alive, 3), "model_busy_s": round(busy, 3),
                "model_idle_s": round(max(alive - busy, 0.0), 3),
                "samples_per_s": round(self.samples / alive, 3) if alive else None,
                "tokens_per_s": round(self.tokens / alive, 3) if alive else None,
                "max_shards_open": self.meter.max_open_shards, "torch_threads": self.torch_threads,
                "decode_workers": self.processor.decode_workers,
                "malloc": self.malloc, "versions": self.versions,  # this process's (the driver's may differ)
                # cores this process really used: > reserved CPUs means it competes with its neighbours
                "cores_used": round((_process_cpu_s() - self.ready_cpu) / alive, 2) if alive else None}


def _process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system
