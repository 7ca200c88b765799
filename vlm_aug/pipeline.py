"""The per-shard work shared by every executor: read -> decode -> stages -> write."""

from __future__ import annotations

import functools
import itertools
import os
import queue
import threading
import time
from collections import defaultdict
from typing import Iterable, Iterator

from vlm_aug.config import Config
from vlm_aug.record import RunContext
from vlm_aug.sample import Sample
from vlm_aug.shards.decode import start_decoding
from vlm_aug.shards.images import encode_ahead
from vlm_aug.shards.read import ShardReader, input_identity, shard_name
from vlm_aug.shards.write import ShardWriter
from vlm_aug.stages.decide import DecideStage
from vlm_aug.stages.engines import EngineUnavailable
from vlm_aug.stages.rewrite import RewriteStage
from vlm_aug.stages.score import ScoreStage
from vlm_aug.workers import Workers, default_decode_workers

_DONE = object()


def build_stages(config: Config) -> list:
    if config.dry_run:
        from vlm_aug.stages.passthrough import PassThroughStage

        return [PassThroughStage()]
    return [RewriteStage(config.vlm, config.generation, config.limits), ScoreStage(config.clip, config.policy.repair),
            DecideStage(config.policy, config.generation.seed)]


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Produce `items` in a background thread, so reading and decoding overlap model compute. When the
    consumer stops early (an error, Ctrl-C), the thread is told to stop and waited for: a thread left
    inside torch or Pillow while the interpreter exits aborted the process ('terminate called without
    an active exception', exit 134 instead of 130) in one Ctrl-C of four."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not hand(item):
                    return
        except BaseException as exc:  # re-raised in the consumer
            hand(exc)
        hand(_DONE)

    thread = threading.Thread(target=produce, daemon=True, name="vlm_aug-prefetch")
    thread.start()
    try:
        while (item := slots.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)  # the batch in hand: a read, a decode, a processor call


def keep_image_memory(blocks: int) -> None:
    """Let Pillow keep up to `blocks` freed image memory blocks for the next images (its block allocator,
    PILLOW_BLOCKS_MAX; off by default). Otherwise every decoded photo is fresh memory from the OS,
    page-faulted and zeroed: on 512-1024 px JPEGs decoding ran 1.4-1.6x faster with it (docs/performance.md).
    One read batch of images is about what a worker frees before it decodes the next. A user's
    PILLOW_BLOCKS_MAX is left as it is."""
    from PIL import Image

    if "PILLOW_BLOCKS_MAX" not in os.environ and Image.core.get_blocks_max() < blocks:
        Image.core.set_blocks_max(blocks)


@functools.lru_cache(maxsize=1)
def _not_the_datas() -> tuple:
    """Faults of the worker, never of a sample: raised, so the shard is retried, not marked done. A CUDA
    out-of-memory error is a RuntimeError (not a MemoryError): it made a too-large vlm.batch_size rerun
    every batch one sample at a time, and a sample too large alone a committed rewrite_error."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return (KeyboardInterrupt, SystemExit, MemoryError, EngineUnavailable, oom)


def run_stage(stage, batch: list[Sample]) -> None:
    """Run a stage on a batch; if the batch fails, isolate the sample(s) that make it fail,
    so one hostile input costs one sample, not the shard. If every sample fails on its
    own too, the fault is not the data's: raise, so the shard is retried, not marked done."""
    not_the_datas = _not_the_datas()
    try:
        return stage.process_batch(batch)
    except not_the_datas:
        raise
    except Exception as batch_exc:
        first_error = batch_exc
    active = [s for s in batch if s.active]
    failures = []
    for sample in active:
        try:
            stage.process_batch([sample])
        except not_the_datas:
            raise
        except Exception as exc:
            failures.append((sample, exc))
    if len(active) > 1 and len(failures) == len(active):
        raise first_error
    for sample, exc in failures:
        sample.fail(f"{stage.name}_error", f"{type(exc).__name__}: {exc}")


class ShardProcessor:
    """Holds the loaded stages; turns one input shard into one committed output shard."""

    def __init__(self, config: Config, run: RunContext, stages: list | None = None, cores: float | None = None):
        """`cores`: the CPUs reserved for this worker (a Ray actor's), which size the decode threads when
        `input.decode_workers` is unset; None: the CPUs this process may run on."""
        self.config, self.run = config, run
        self.decode_workers = config.input.decode_workers or default_decode_workers(cores, model=not config.dry_run)
        self.stages = stages if stages is not None else build_stages(config)
        self.ready = False
        self._pool = None
        self._pool_lock = threading.Lock()  # a Ray actor's shards in flight ask for the pool at once
        self._opened: _OpenShard | None = None  # the next shard, opened ahead (process's `then`)

    def decode_pool(self):
        """The threads that decode images and prepare model inputs, the calling one among them
        (`decode_workers`: input.decode_workers, else half the worker's cores, 1-4); None for one:
        the caller alone."""
        if self.decode_workers > 1 and self._pool is None:
            with self._pool_lock:  # one pool: two made at once left one to be collected, its threads idle
                if self._pool is None:
                    self._pool = Workers(self.decode_workers, name="vlm_aug-decode")
        return self._pool

    def close(self) -> None:
        """Stop the decode threads (a process that runs several pipelines must not collect idle pools)."""
        self._discard_opened()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def setup(self) -> None:
        if not self.ready:
            keep_image_memory(self.batch_samples())
            for stage in self.stages:
                stage.setup()
            self.run.describe_stages(self.stages)
            self.run.settle_engine(self.engine_name())  # vlm.engine auto: the settings of the engine picked here
            self.ready = True

    def engine_name(self) -> str | None:
        """The engine that generates here (hf, vllm, openai); None without one (the dry run)."""
        return next((s.engine.name for s in self.stages if hasattr(s, "engine")), None)

    def batch_samples(self) -> int:
        """Samples read and decoded together: a serving engine gets a whole window to schedule."""
        engine = next((s.engine for s in self.stages if hasattr(s, "engine")), None)
        if engine is not None and engine.per_call is None:
            return self.config.vlm.window
        return max(self.config.vlm.batch_size * 2, 16)

    def _ready(self, batch: list[Sample], decoded, timings: dict) -> list[Sample]:
        """Wait for a batch's images (`decoded`: `start_decoding`'s) and let the stages prepare their
        inputs (in the prefetch thread when there is one)."""
        begun = time.perf_counter()
        decoded()
        timings["read_decode"] += time.perf_counter() - begun
        pool = self.decode_pool()
        begun = time.perf_counter()
        if encode_ahead(batch, self.config.output.normalize_image_format, pool):  # else the writer's, on the model's thread
            timings["encode"] += time.perf_counter() - begun
        for stage in self.stages:
            prepare = getattr(stage, "prepare", None)
            if prepare is not None:
                begun = time.perf_counter()
                try:
                    prepare(batch, pool)
                except Exception:  # noqa: BLE001 - process_batch computes what is missing, where a bad
                    for sample in batch:  # sample is isolated and gets its reason (run_stage)
                        sample.prepared.pop(stage.name, None)  # the other stages' inputs stay
                timings["prepare"] += time.perf_counter() - begun
        return batch

    def _open(self, url: str) -> "_OpenShard":
        cfg = self.config
        return _OpenShard(url, ShardReader(url, cfg.input.caption_key, cfg.input.image_exts, cfg.limits.max_member_bytes,
                                          cfg.limits.max_caption_bytes),
                          self.batch_samples())

    def _open_next(self, then, ready: bool) -> None:
        """Open the shard that comes next (`then`: its url, or a function that returns it or None) and
        start decoding its first batch, so that the decode threads work while this shard's last batch is
        written and committed (else they wait at every shard's end: ~10% of a dry run on 64-sample
        shards). `ready`: also finish that batch and let the stages prepare it (in the prefetch thread,
        while the model works on this shard's last batches), so the model does not wait for it.
        A failure here is left to `process(url)` to meet."""
        url = then() if callable(then) else then
        if url is None:
            return
        try:
            shard = self._open(url)
            shard.start(self.config.limits, self.decode_pool())
            if ready and shard.pending:
                batch, decoded = shard.pending[0]
                shard.pending[0] = (self._ready(batch, decoded, shard.timings), None)
        except Exception:  # noqa: BLE001 - met again, and reported, when the shard's turn comes
            return
        self._discard_opened()
        self._opened = shard

    def _discard_opened(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def _batches(self, shard: "_OpenShard", ahead: bool, then) -> Iterator[list[Sample]]:
        """Decoded, prepared batches. `ahead` (no prefetch thread): with a decode pool, the next batch is
        read and its images handed to the pool before this one is returned, so that reading and writing
        overlap decoding (one batch ahead: memory stays at two batches). `then`: the shard processed
        next (`_open_next`), opened when this one's last batch is read (`ahead`) or returned."""
        limits, pool = self.config.limits, self.decode_pool()
        depth = 2 if ahead and pool is not None else 1
        while True:
            while len(shard.pending) < depth and shard.start(limits, pool):
                pass
            if ahead and then is not None and shard.exhausted and len(shard.pending) <= 1:
                self._open_next(then, ready=False)
                then = None
            if not shard.pending:
                break
            batch, decoded = shard.pending.pop(0)
            yield batch if decoded is None else self._ready(batch, decoded, shard.timings)
        if then is not None:
            self._open_next(then, ready=True)

    def process(self, url: str, then=None) -> dict:
        """`then`: the shard this processor will be given next, if known (the local executor), or a
        function that returns it, or None, when asked."""
        self.setup()
        cfg = self.config
        opened, self._opened = self._opened, None
        if opened is not None and opened.url != url:
            opened.close()
            opened = None
        shard = opened or self._open(url)
        identity, reader, timings = shard.identity, shard.reader, shard.timings
        writer = ShardWriter(cfg.output.path, shard_name(url), self.run, cfg.output.normalize_image_format)
        model = any(getattr(stage, "uses_model", True) for stage in self.stages)
        batches = self._batches(shard, ahead=not model, then=then)
        if model:
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
                    for part, seconds in (stage.take_timings() if hasattr(stage, "take_timings") else {}).items():
                        timings[part] += seconds  # a part of the stage's time (vllm: vlm_preprocess)
                start = time.perf_counter()
                for sample in batch:
                    writer.add(sample)  # may re-encode from the decoded image (output.normalize_image_format)
                    sample.image, sample.prepared, sample.encoded = None, {}, None
                timings["write"] += time.perf_counter() - start
            start = time.perf_counter()
            where = url if "://" in url else os.path.abspath(url)  # a rerun from another folder names it alike
            stats = writer.commit(reader.report.error, reader.report.ignored_members, timings, identity, where)
            stats["timings_s"]["write"] = round(timings["write"] + time.perf_counter() - start, 4)
            return stats
        except BaseException:
            writer.abort()
            raise
        finally:  # the prefetch thread stops now, not when a reference cycle (the error's frames) is collected
            batches.close()


class _OpenShard:
    """One input shard being read: its identity (taken before reading: a shard replaced meanwhile is
    redone next time), its reader, and the batches whose images are being decoded."""

    def __init__(self, url: str, reader: ShardReader, batch_samples: int):
        self.url, self.reader = url, reader
        self.identity = input_identity(url)
        self.timings: dict = defaultdict(float)
        # (batch, start_decoding's finish), or (batch, None) once decoded and prepared (opened ahead)
        self.pending: list[tuple[list[Sample], object]] = []
        self.exhausted = False
        self._samples = iter(reader)
        self._size = batch_samples

    def start(self, limits, pool) -> bool:
        """Read the next batch and hand its images to the decode threads; False at the shard's end."""
        if self.exhausted:
            return False
        begun = time.perf_counter()
        batch = list(itertools.islice(self._samples, self._size))
        if len(batch) < self._size:
            self.exhausted = True
        if batch:
            self.pending.append((batch, start_decoding(batch, limits.max_image_pixels, limits.max_image_bytes, pool)))
        self.timings["read_decode"] += time.perf_counter() - begun
        return bool(batch)

    def close(self) -> None:
        self._samples.close()  # the reader's open file
