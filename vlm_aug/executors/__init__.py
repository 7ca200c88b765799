"""Executors only decide where shards run; the per-shard work is `pipeline.ShardProcessor`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShardOutcome:
    url: str
    stats: dict | None = None
    error: str | None = None
    attempts: int = 1


@dataclass
class ExecutorReport:
    outcomes: list[ShardOutcome] = field(default_factory=list)
    workers: dict = field(default_factory=dict)  # per-worker throughput / idle time
    startup_s: float = 0.0
