"""Driver-side scheduling of shards onto a pool of actors: backpressure, retries, replacement.

Each actor holds at most `max_shards_in_flight_per_actor` shards; the rest wait as plain
URLs on the driver, so memory stays flat however many shards there are. An actor that
dies is replaced and its shards go back to the front of the queue until they have used
`max_retries`; then they are recorded as failed and the run goes on. Every wait has a
timeout: placement (resource_timeout_s), model load (setup_timeout_s), one shard
(shard_timeout_s).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from tqdm import tqdm

from vlm_aug.config import ConfigError, RayConfig
from vlm_aug.executors import ShardOutcome
from vlm_aug.executors.ray_cluster import ClusterResourceError, alive_nodes, describe_nodes


@dataclass
class Task:
    url: str
    attempts: int = 0
    errors: list = field(default_factory=list)
    submitted: float = 0.0


@dataclass
class Slot:
    index: int
    handle: Any
    created: float
    state: str = "placing"  # placing -> loading -> ready -> dead
    identity: str = ""
    since: float = 0.0  # when the current state began
    inflight: dict = field(default_factory=dict)  # ref -> Task
    idle_since: float | None = None
    counters: dict = field(default_factory=lambda: {"shards": 0, "samples": 0, "tokens": 0, "starved_s": 0.0})


def _say(message: str) -> None:
    tqdm.write(f"vlm-aug[ray]: {message}", file=sys.stderr)


class ActorStartError(ConfigError):
    """The actor class cannot even be constructed on the cluster (e.g. vlm_aug missing on a node)."""


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [""]
    detail = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"  # Ray puts the why last
    return f"{type(exc).__name__}: {detail[:400]}"


class ShardScheduler:
    def __init__(self, spawn: Callable[[int], Any], num_actors: int, cfg: RayConfig, progress,
                 committed: Callable[[str], dict | None] | None = None):
        self.spawn_actor, self.num_actors, self.cfg, self.progress = spawn, num_actors, cfg, progress
        # url -> the stats this run committed for it, or None: an actor can die after committing a
        # shard and before its result reaches us; the committed output is the truth then.
        self.committed = committed or (lambda url: None)
        self.slots: list[Slot] = []
        self.watch: dict = {}  # ref -> (kind, slot, task)
        self.pending: deque[Task] = deque()
        self.outcomes: list[ShardOutcome] = []
        self.workers: dict = {}
        self.described: dict | None = None
        self.replacements = 0
        self.started = time.perf_counter()
        self.startup_s = 0.0

    # ---- actor life cycle -------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        slot = Slot(index, self.spawn_actor(index), created=time.monotonic(), since=time.monotonic())
        self.watch[slot.handle.ping.remote()] = ("ping", slot, None)
        self.slots.append(slot)

    def _kill(self, slot: Slot, reason: str) -> None:
        """Forget the actor, put its shards back (or fail them), and start a replacement."""
        import ray

        if slot.state == "dead":
            return
        placed = slot.state != "placing"
        slot.state = "dead"
        ray.kill(slot.handle, no_restart=True)
        for ref in [r for r, (_, s, _) in self.watch.items() if s is slot]:
            del self.watch[ref]
        self._record_worker(slot, died=reason)
        for task in slot.inflight.values():
            stats = self.committed(task.url)
            if stats is not None:
                _say(f"{task.url} was committed before actor {slot.identity or slot.index} died; kept")
                self.outcomes.append(ShardOutcome(task.url, stats=stats, attempts=task.attempts))
                self.progress.shard_done(stats)
                continue
            self._retry_or_fail(task, f"actor {slot.identity or slot.index} died: {reason}")
        slot.inflight.clear()
        if placed and self.replacements < self.num_actors * (self.cfg.max_retries + 1):
            self.replacements += 1
            _say(f"actor {slot.identity or slot.index} lost ({reason}); starting a replacement")
            self._spawn(slot.index)

    def _record_worker(self, slot: Slot, **extra) -> None:
        if slot.identity:
            counters = {**slot.counters, "starved_s": round(slot.counters["starved_s"], 3)}
            self.workers[slot.identity] = {**self.workers.get(slot.identity, {}), **counters, **extra}

    # ---- shards ------------------------------------------------------------------------------
    def _retry_or_fail(self, task: Task, error: str) -> None:
        task.errors.append(error)
        if task.attempts <= self.cfg.max_retries:
            _say(f"retrying {task.url} (attempt {task.attempts + 1}): {error}")
            self.pending.appendleft(task)
            return
        detail = error if len(task.errors) == 1 else f"{error} (after {task.attempts} attempts: {task.errors})"
        self.outcomes.append(ShardOutcome(task.url, error=detail, attempts=task.attempts))
        self.progress.shard_failed(task.url, detail)

    def _fill(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            while slot.state == "ready" and self.pending and len(slot.inflight) < self.cfg.max_shards_in_flight_per_actor:
                task = self.pending.popleft()
                task.attempts += 1
                task.submitted = now
                ref = slot.handle.process.remote(task.url)
                self.watch[ref] = ("shard", slot, task)
                slot.inflight[ref] = task
                if slot.idle_since is not None:
                    slot.counters["starved_s"] += now - slot.idle_since
                    slot.idle_since = None

    def _release(self, slot: Slot, ref) -> Task:
        task = slot.inflight.pop(ref)
        if not slot.inflight:
            slot.idle_since = time.monotonic()
        return task

    def _done(self, slot: Slot, ref, stats: dict) -> None:
        task = self._release(slot, ref)
        counters = slot.counters
        counters["shards"] += 1
        counters["samples"] += stats["counts"]["inputs"]
        counters["tokens"] += stats.get("scores", {}).get("new_tokens", 0)
        self.outcomes.append(ShardOutcome(task.url, stats=stats, attempts=task.attempts))
        self.progress.shard_done(stats)

    # ---- events ------------------------------------------------------------------------------
    def _handle(self, ref) -> None:
        import ray
        from ray.exceptions import RayTaskError

        if ref not in self.watch:  # its actor was already given up
            return
        kind, slot, task = self.watch.pop(ref)
        try:
            value = ray.get(ref)
        except RayTaskError as exc:
            if kind == "shard":
                self._release(slot, ref)
                return self._retry_or_fail(task, _error_text(exc))
            cause = getattr(exc, "cause", None)  # a model that cannot load fails on every actor
            raise (cause if isinstance(cause, Exception) else exc) from None
        except ray.exceptions.RayError as exc:  # the actor died: killed, OOM, node lost
            if getattr(exc, "actor_init_failed", False):
                raise ActorStartError(
                    f"the Ray actor could not be created: {str(exc)[-1500:]}\nIf a module is missing, install "
                    "vlm-aug on every node (or pass it with a runtime_env, see docs/cluster.md)") from None
            return self._kill(slot, _error_text(exc))
        if kind == "ping":
            slot.state, slot.since, slot.identity = "loading", time.monotonic(), value["worker"]
            self.workers[slot.identity] = {"node_id": value["node_id"], "gpu_ids": value["gpu_ids"]}
            self.watch[slot.handle.setup.remote()] = ("setup", slot, None)
        elif kind == "setup":
            slot.state, slot.since, slot.idle_since = "ready", time.monotonic(), time.monotonic()
            self.described = self.described or value
            self.workers[slot.identity]["setup_s"] = value["setup_s"]
            if not self.startup_s:
                self.startup_s = time.perf_counter() - self.started
        else:
            self._done(slot, ref, value)

    def _check_timeouts(self) -> None:
        now, cfg = time.monotonic(), self.cfg
        for slot in list(self.slots):
            if slot.state == "placing" and now - slot.since > cfg.resource_timeout_s:
                self._unplaceable(slot)
            elif slot.state == "loading" and now - slot.since > cfg.setup_timeout_s:
                self._kill(slot, f"loading the models took over ray.setup_timeout_s={cfg.setup_timeout_s:g} s")
            elif slot.state == "ready":
                late = [t for t in slot.inflight.values() if now - t.submitted > cfg.shard_timeout_s]
                if late:
                    self._kill(slot, f"shard {late[0].url} ran over ray.shard_timeout_s={cfg.shard_timeout_s:g} s")

    def _unplaceable(self, slot: Slot) -> None:
        message = (f"an actor could not be placed within ray.resource_timeout_s={self.cfg.resource_timeout_s:g} s; "
                   f"the cluster has {describe_nodes(alive_nodes())}")
        self._kill(slot, message)
        if any(s.state != "dead" for s in self.slots):
            _say(f"{message}; going on with the actors that are up")
        elif self.startup_s:  # mid-run (a lost node): record what is left as failed, keep what is done
            self._fail_rest(message)
        else:
            raise ClusterResourceError(message)

    def _fail_rest(self, reason: str) -> None:
        while self.pending:
            task = self.pending.popleft()
            task.errors.append(reason)
            self.outcomes.append(ShardOutcome(task.url, error=reason, attempts=task.attempts))
            self.progress.shard_failed(task.url, reason)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, urls: list[str]) -> list[ShardOutcome]:
        import ray

        self.pending.extend(Task(url) for url in urls)
        for index in range(self.num_actors):
            self._spawn(index)
        while self.pending or any(s.inflight for s in self.slots):
            self._fill()
            if not self.watch:
                self._fail_rest("no actor left: every replacement died too (see the errors above)")
                break
            ready, _ = ray.wait(list(self.watch), num_returns=1, timeout=1.0)
            if ready:
                ready, _ = ray.wait(list(self.watch), num_returns=len(self.watch), timeout=0)
            for ref in ready:
                self._handle(ref)
            self._check_timeouts()
        return self.outcomes

    def worker_report(self, timeout_s: float = 10.0) -> dict:
        """Per-actor throughput and idle time: the actor's own view, with the driver's counters."""
        import ray

        for slot in self.slots:
            if slot.state in ("loading", "ready"):
                if slot.idle_since is not None:
                    slot.counters["starved_s"] += time.monotonic() - slot.idle_since
                    slot.idle_since = None
                self._record_worker(slot, state=slot.state)  # "loading": the run ended before its models did
        live = [s for s in self.slots if s.state == "ready"]
        refs = [s.handle.metrics.remote() for s in live]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
        for slot, ref in zip(live, refs):
            if ref in ready:
                self.workers[slot.identity].update(ray.get(ref))
        return self.workers

    def stop(self) -> None:
        import ray

        for slot in self.slots:
            if slot.state != "dead":
                slot.state = "dead"
                ray.kill(slot.handle, no_restart=True)
