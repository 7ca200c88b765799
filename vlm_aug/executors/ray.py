"""Ray executor: the same per-shard work as `local`, on a pool of long-lived actors.

Connects to `ray.address` / RAY_ADDRESS or starts an embedded local instance, sizes
the pool from the cluster (`executors.ray_cluster`), schedules shards with
backpressure and retries (`executors.ray_pool`) onto `executors.ray_actor.ShardWorker`.
Output and resume are the foundation's: a shard is done when its stats file is committed.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from vlm_aug.config import Config
from vlm_aug.executors import ExecutorReport, sigterm_as_interrupt
from vlm_aug.executors.ray_actor import ShardWorker
from vlm_aug.executors.ray_cluster import connect, plan_pool, quiet_token_auth
from vlm_aug.executors.ray_pool import ShardScheduler, _say
from vlm_aug.pipeline import ShardProcessor
from vlm_aug.progress import RunProgress
from vlm_aug.shards.layout import OutputDir
from vlm_aug.shards.read import shard_name
from vlm_aug.stages.base import Resources


class RayExecutor:
    name = "ray"

    def __init__(self, config: Config):
        self.config = config

    def _spawner(self, processor: ShardProcessor, plan):
        import ray

        worker_cls = ray.remote(ShardWorker)
        options = dict(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=0,
                       max_concurrency=self.config.ray.max_shards_in_flight_per_actor + 1)  # +1: ping/metrics

        config = self.config
        if not plan.num_gpus:  # no GPU reserved: `auto` must not pick up a GPU another actor holds
            config = config.model_copy(deep=True)
            for section in (config.vlm, config.clip):
                section.device = "cpu" if section.device == "auto" else section.device

        def spawn(index: int):
            return worker_cls.options(**options).remote(config, processor.run, index, plan.torch_threads, plan.num_cpus)

        return spawn

    def run(self, urls: list[str], processor: ShardProcessor, progress: RunProgress) -> ExecutorReport:
        quiet_token_auth(self.config.ray)  # before Ray is imported
        import ray

        start = time.perf_counter()
        names = {shard_name(u) for u in urls}
        out = OutputDir(self.config.output.path, must_exist=False)
        owned, embedded = False, False
        scheduler = None
        term = signal.getsignal(signal.SIGTERM)  # ray.init installs its own (sys.exit): put back after the pool
        try:
            owned, embedded = connect(self.config.ray)
            with sigterm_as_interrupt():  # after connect: ray.init installs its own SIGTERM handler
                plan = plan_pool(self.config.ray, embedded, Resources.of_worker(processor.stages))
                _say(f"{'embedded local Ray' if embedded else 'Ray cluster'}: {plan.describe()}, "
                     f"{len(urls)} shard(s)")
                run_id = processor.run.run_id
                scheduler = ShardScheduler(self._spawner(processor, plan), plan.num_actors, self.config.ray, progress,
                                           committed=lambda url: out.committed_stats(shard_name(url), run_id))
                outcomes = scheduler.run(urls)
                workers = scheduler.worker_report()
        finally:
            if scheduler is not None:
                scheduler.stop()
            if owned:
                ray.shutdown()
            if threading.current_thread() is threading.main_thread() and term is not None:
                signal.signal(signal.SIGTERM, term)  # the run's SIGTERM-as-Ctrl-C for the manifest and card
            out.remove_temps(names)  # left by actors killed mid-shard
        self._cite_stages(processor, scheduler.described)
        report = ExecutorReport(outcomes=outcomes, workers=workers)
        report.startup_s = scheduler.startup_s or time.perf_counter() - start
        return report

    @staticmethod
    def _cite_stages(processor: ShardProcessor, described: dict | None) -> None:
        """The models were loaded in the actors: copy what they describe into the driver's run."""
        if described:
            processor.run.sections, processor.run.models = described["sections"], described["models"]
            # vlm.engine auto: what the actor picked (an actor that picked otherwise refused its setup)
            processor.run.settings, processor.run.fingerprint = described["settings"], described["fingerprint"]
        else:
            print("vlm-aug[ray]: no actor finished loading the models", file=sys.stderr)
