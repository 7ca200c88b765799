"""Executors only decide where shards run; the per-shard work is `pipeline.ShardProcessor`."""

from __future__ import annotations

import contextlib
import signal
import threading
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


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's kill, `timeout`) unwinds like Ctrl-C, so actors and Ray are stopped."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
