"""Stages: each declares its resources, loads its model once in `setup()`, and
transforms a batch of Samples in place in `process_batch()`. No stage imports Ray."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from vlm_aug.sample import Sample


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0


class Stage(Protocol):
    name: str
    resources: Resources

    def setup(self) -> None: ...

    def process_batch(self, samples: list[Sample]) -> None: ...

    def describe(self) -> dict: ...


def derive_seed(run_seed: int, *parts: str) -> int:
    """A 31-bit seed from the run seed and a sample's identity: independent of batching."""
    text = ":".join([str(run_seed), *parts])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") >> 1
