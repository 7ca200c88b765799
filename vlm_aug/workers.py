"""Host work on several threads, the calling thread among them (`input.decode_workers`).

`Workers(n).map(fn, items)` runs `fn` over `items` on `n` threads: `n - 1` pool threads and the thread
that calls it, which works through the same items instead of waiting. So `n` is the number of threads
doing the work, never more, also when several threads call `map` at once (a Ray actor's shards in
flight: a caller then waits for a slot): with a pool of `n` threads beside a caller that reads and writes shards,
`n + 1` runnable threads shared 2 cores, and the image decoders waited for CPU and the GIL (2 decode
workers reached 1.55-1.75x of 1 on realistic JPEGs; docs/performance.md). The work is meant to release
the GIL (Pillow decoding, hashing, torch, numpy).

`start_map` hands the items to the pool threads now and returns the function that finishes them (the
caller works through what is left, then waits): the caller can read the next batch or write the last
one while the pool threads work.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: `taskset`, a cpuset), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_decode_workers(cores: float | None = None, model: bool = True) -> int:
    """`input.decode_workers` when unset: half the worker's cores, 1 to 4 (the other half for the models
    and the thread that drives them); without a model (the dry run) all of them, 1 to 4: nothing else
    needs a core (on 2 cores a dry run went ~10% faster with 2 than with 1). `cores`: the CPUs reserved
    for the worker (a Ray actor's `ray.num_cpus_per_actor`: an actor of 1 CPU on a 64-core node gets 1
    thread, not 4); None: the CPUs this process may run on (`usable_cpus`)."""
    if cores is None:
        cores = usable_cpus()
    return max(1, min(4, int(cores) // (2 if model else 1)))


class Workers:
    def __init__(self, n: int, name: str = "vlm_aug-host"):
        if n < 1:
            raise ValueError(f"Workers needs at least 1 thread, got {n}")
        self.n = n
        self._pool = ThreadPoolExecutor(n - 1, thread_name_prefix=name) if n > 1 else None
        # at most `n` items run at once over every map: a Ray actor's shards in flight each call `map`
        # from their own thread, and each caller works too, so k shards ran k + n - 1 items at once
        self._slots = threading.BoundedSemaphore(n)

    def start_map(self, fn: Callable[[T], R], items: Iterable[T]) -> Callable[[], list[R]]:
        """Start `fn` over `items` on the pool threads; the returned function works on the rest in the
        calling thread and returns the results in order. An exception of `fn` is raised there (the first
        one in the order the threads met them; the other items are still run)."""
        items = list(items)
        results: list = [None] * len(items)
        claim = itertools.count()  # next() is atomic: each item is claimed by exactly one thread

        def work() -> None:
            error = None
            while (i := next(claim)) < len(items):
                try:
                    with self._slots:
                        results[i] = fn(items[i])
                except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
                    error = error or exc
            if error is not None:
                raise error

        helpers = [] if self._pool is None else [self._pool.submit(work) for _ in range(min(self.n - 1, len(items)))]

        def finish() -> list[R]:
            try:
                work()
            finally:
                errors = [f.exception() for f in helpers]  # waits for every helper, even on an error here
            for error in errors:
                if error is not None:
                    raise error
            return results

        return finish

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`fn` over `items` on all `n` threads; the results in order."""
        return self.start_map(fn, items)()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
