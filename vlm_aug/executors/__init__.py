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


RECEIVED: list[int] = []  # the signals `interrupt` turned into KeyboardInterrupt, of this command


def interrupt(signum, frame):
    """Ctrl-C or SIGTERM as KeyboardInterrupt, and remembered: one raised inside a `__del__` (a progress
    bar collected meanwhile) is lost, and the run went on to exit 0 (`cli.main` looks here at the end)."""
    RECEIVED.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signal_handler(handler, *signums: int):
    """`handler` for these signals while in the block (main thread only), the handlers before restored; a
    signal ignored (a background job of a script: SIGINT) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signums if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


def signals_as_interrupt(*signums: int):
    """`interrupt` for these signals while in the block."""
    return signal_handler(interrupt, *signums)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's kill, `timeout`) unwinds like Ctrl-C, so actors and Ray are stopped."""
    with signals_as_interrupt(signal.SIGTERM):
        yield
