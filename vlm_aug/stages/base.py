"""The stage contract: each stage declares its resources, loads its model once in `setup()`, and
transforms a batch of Samples in place in `process_batch()`. No stage imports Ray."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from vlm_aug.sample import Sample


@dataclass(frozen=True)
class Resources:
    """What a stage needs on its worker. `gpus` is taken where the cluster has GPUs; with
    `needs_gpu` the stage cannot run without one (its device names CUDA). `gpu_memory`: the share of each
    GPU's whole memory the stage takes whatever its reservation (vLLM's gpu_memory_utilization), 0 when it
    takes what it uses."""

    cpus: float = 1.0
    gpus: float = 0.0
    needs_gpu: bool = False
    gpu_memory: float = 0.0

    @classmethod
    def for_device(cls, device: str, cpus: float = 1.0) -> "Resources":
        """A model stage on `device`: `cpu` takes no GPU, `auto` one where there is one, `cuda*` one always."""
        return cls(cpus=cpus, gpus=0.0 if device == "cpu" else 1.0, needs_gpu=device.startswith("cuda"))

    @classmethod
    def of_worker(cls, stages: list) -> "Resources":
        """One worker runs its stages one after another on the same devices: the most any one needs."""
        declared = [s.resources for s in stages] or [cls()]
        return cls(cpus=max(r.cpus for r in declared), gpus=max(r.gpus for r in declared),
                   needs_gpu=any(r.needs_gpu for r in declared), gpu_memory=max(r.gpu_memory for r in declared))


class Stage(Protocol):
    name: str
    section: str  # the record section its `describe()` fills: generation, scoring or decision
    resources: Resources
    uses_model: bool  # runs a model: a worker holding several shards runs one such batch at a time

    def setup(self) -> None: ...

    def process_batch(self, samples: list[Sample]) -> None: ...

    def describe(self) -> dict: ...

    # optional: `prepare(samples, pool)` does a batch's host work that needs no model result (image
    # preprocessing, the processor's tensors) into `sample.prepared[stage.name]`. The pipeline calls it
    # in the prefetch thread, so it overlaps the model's work on the previous batch; `pool` (a
    # vlm_aug.workers.Workers, or None) spreads it over cores with `pool.map`. If it raises, only this
    # stage's entries are dropped. `process_batch` uses what it finds there and computes what it does not.


def derive_seed(run_seed: int, *parts: str) -> int:
    """A 31-bit seed from the run seed and a sample's identity: independent of batching."""
    text = ":".join([str(run_seed), *parts])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") >> 1
