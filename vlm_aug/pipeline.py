"""The per-shard work shared by every executor: read -> decode -> stages -> write."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

from vlm_aug.config import Config
from vlm_aug.record import RunContext
from vlm_aug.sample import Sample
from vlm_aug.shards.decode import decode_samples
from vlm_aug.shards.read import ShardReader, input_identity, shard_name
from vlm_aug.shards.write import ShardWriter
from vlm_aug.stages.decide import DecideStage
from vlm_aug.stages.engines import EngineUnavailable
from vlm_aug.stages.rewrite import RewriteStage
from vlm_aug.stages.score import ScoreStage

_DONE = object()


def build_stages(config: Config) -> list:
    if config.dry_run:
        from vlm_aug.stages.passthrough import PassThroughStage

        return [PassThroughStage()]
    return [RewriteStage(config.vlm, config.generation, config.limits), ScoreStage(config.clip, config.policy.repair),
            DecideStage(config.policy, config.generation.seed)]


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Produce `items` in a background thread, so reading and decoding overlap model compute."""
    slots: queue.Queue = queue.Queue(maxsize=depth)

    def produce():
        try:
            for item in items:
                slots.put(item)
        except BaseException as exc:  # re-raised in the consumer
            slots.put(exc)
        slots.put(_DONE)

    threading.Thread(target=produce, daemon=True).start()
    while (item := slots.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise item
        yield item


def keep_image_memory(blocks: int) -> None:
    """Let Pillow keep up to `blocks` freed image memory blocks for the next images (its block allocator,
    PILLOW_BLOCKS_MAX; off by default). Otherwise every decoded photo is fresh memory from the OS,
    page-faulted and zeroed: on 512-1024 px JPEGs decoding ran 1.4-1.6x faster with it (docs/performance.md).
    One read batch of images is about what a worker frees before it decodes the next. A user's
    PILLOW_BLOCKS_MAX is left as it is."""
    from PIL import Image

    if "PILLOW_BLOCKS_MAX" not in os.environ and Image.core.get_blocks_max() < blocks:
        Image.core.set_blocks_max(blocks)


def run_stage(stage, batch: list[Sample]) -> None:
    """Run a stage on a batch; if the batch fails, isolate the sample(s) that make it fail,
    so one hostile input costs one sample, not the shard. If every sample fails on its
    own too, the fault is not the data's: raise, so the shard is retried, not marked done."""
    try:
        return stage.process_batch(batch)
    except (KeyboardInterrupt, SystemExit, MemoryError, EngineUnavailable):  # not the data's fault
        raise
    except Exception as batch_exc:
        first_error = batch_exc
    active = [s for s in batch if s.active]
    failures = []
    for sample in active:
        try:
            stage.process_batch([sample])
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:
            failures.append((sample, exc))
    if len(active) > 1 and len(failures) == len(active):
        raise first_error
    for sample, exc in failures:
        sample.fail(f"{stage.name}_error", f"{type(exc).__name__}: {exc}")


class ShardProcessor:
    """Holds the loaded stages; turns one input shard into one committed output shard."""

    def __init__(self, config: Config, run: RunContext, stages: list | None = None):
        self.config, self.run = config, run
        self.stages = stages if stages is not None else build_stages(config)
        self.ready = False
        self._pool = None

    def decode_pool(self):
        """Threads decoding images (input.decode_workers; None: half the cores, 1-4); None for one."""
        workers = self.config.input.decode_workers or max(1, min(4, (os.cpu_count() or 2) // 2))
        if workers > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="vlm_aug-decode")
        return self._pool

    def close(self) -> None:
        """Stop the decode threads (a process that runs several pipelines must not collect idle pools)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def setup(self) -> None:
        if not self.ready:
            keep_image_memory(self.batch_samples())
            for stage in self.stages:
                stage.setup()
            self.run.describe_stages(self.stages)
            self.ready = True

    def batch_samples(self) -> int:
        """Samples read and decoded together: a serving engine gets a whole window to schedule."""
        engine = next((s.engine for s in self.stages if hasattr(s, "engine")), None)
        if engine is not None and engine.per_call is None:
            return self.config.vlm.window
        return max(self.config.vlm.batch_size * 2, 16)

    def _ready(self, batch: list[Sample], timings: dict, start: float) -> list[Sample]:
        """Decode a batch's images and let the stages prepare their inputs (all in the prefetch thread)."""
        limits, pool = self.config.limits, self.decode_pool()
        decode_samples(batch, limits.max_image_pixels, limits.max_image_bytes, pool)
        timings["read_decode"] += time.perf_counter() - start
        for stage in self.stages:
            prepare = getattr(stage, "prepare", None)
            if prepare is not None:
                begun = time.perf_counter()
                try:
                    prepare(batch, pool)
                except Exception:  # noqa: BLE001 - process_batch computes what is missing, where a bad
                    for sample in batch:  # sample is isolated and gets its reason (run_stage)
                        sample.prepared.clear()
                timings["prepare"] += time.perf_counter() - begun
        return batch

    def _batches(self, reader: ShardReader, timings: dict) -> Iterator[list[Sample]]:
        batch: list[Sample] = []
        size = self.batch_samples()
        start = time.perf_counter()
        for sample in reader:
            batch.append(sample)
            if len(batch) == size:
                yield self._ready(batch, timings, start)
                batch, start = [], time.perf_counter()
        if batch:
            yield self._ready(batch, timings, start)

    def process(self, url: str) -> dict:
        self.setup()
        cfg = self.config
        identity = input_identity(url)  # before reading: a shard replaced meanwhile is redone next time
        reader = ShardReader(url, cfg.input.caption_key, cfg.input.image_exts, cfg.limits.max_member_bytes)
        writer = ShardWriter(cfg.output.path, shard_name(url), self.run, cfg.output.normalize_image_format)
        timings: dict = defaultdict(float)
        batches = self._batches(reader, timings)
        if any(getattr(stage, "uses_model", True) for stage in self.stages):
            # overlap the host work with the model's (torch releases the GIL); with no model (dry run) a
            # second Python thread would only contend for the GIL: 0.68-0.74 -> 0.75-0.79 of a tar copy
            batches = prefetch(batches)
        try:
            for batch in batches:
                for stage in self.stages:
                    start = time.perf_counter()
                    run_stage(stage, batch)
                    waited = stage.take_wait_s() if hasattr(stage, "take_wait_s") else 0.0
                    timings[stage.name] += time.perf_counter() - start - waited
                    if waited:  # another shard's batch held this worker's models (Ray: shards in flight)
                        timings["model_wait"] += waited
                start = time.perf_counter()
                for sample in batch:
                    writer.add(sample)  # may re-encode from the decoded image (output.normalize_image_format)
                    sample.image, sample.prepared = None, {}
                timings["write"] += time.perf_counter() - start
            start = time.perf_counter()
            stats = writer.commit(reader.report.error, reader.report.ignored_members, timings, identity)
            stats["timings_s"]["write"] = round(timings["write"] + time.perf_counter() - start, 4)
            return stats
        except BaseException:
            writer.abort()
            raise
