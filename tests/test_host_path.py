"""The host path: decoding in threads gives the same images and the same failures as in one thread;
the host threads (the caller among them) run each item once; the next shard opened ahead changes no
output; `executor: auto` picks local for a preview and Ray when a cluster is given or the input is large;
the decode threads are sized from the worker's own cores (a Ray actor's reservation, the process's affinity)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time

import pytest
from PIL import Image

from helpers import image_bytes, make_shards
from vlm_aug.config import load_config
from vlm_aug.run import PREVIEW_BYTES, resolve_executor
from vlm_aug.sample import Sample
from vlm_aug.shards.decode import decode_samples
from vlm_aug.workers import Workers


def samples():
    payloads = [image_bytes((40 + i, 30), (i * 9 % 255, 20, 200), fmt) for i, fmt in
                enumerate(["JPEG", "PNG", "JPEG", "WEBP", "GIF", "BMP", "JPEG", "PNG"] * 3)]
    payloads[3] = b"\xff\xd8\xff broken jpeg"
    payloads[10] = b""
    return [Sample(key=f"k{i}", shard="s.tar", image_bytes=p, image_ext="jpg") for i, p in enumerate(payloads)]


def test_threads_decode_the_same_images_and_failures():
    one, many = samples(), samples()
    decode_samples(one, 50_000_000, 1 << 20)
    with Workers(3) as pool:
        decode_samples(many, 50_000_000, 1 << 20, pool)
    for a, b in zip(one, many):
        assert (a.status, a.reason, a.error_detail, a.image_real_ext) == (b.status, b.reason, b.error_detail,
                                                                          b.image_real_ext)
        assert (a.image is None) == (b.image is None)
        if a.image is not None:
            assert a.image.tobytes() == b.image.tobytes()
    assert [s.reason for s in one if s.reason] == ["decode_error", "decode_error"]
    assert {s.image_real_ext for s in one if s.image is not None} == {"jpg", "png", "webp", "gif", "bmp"}
    # the record's sha256 of the bytes, made on the decode threads, for decoded and broken images alike
    assert all(s.image_sha256 == hashlib.sha256(s.image_bytes).hexdigest() for s in many if s.image_bytes)


def test_workers_run_each_item_once_on_n_threads_the_caller_among_them():
    seen = []

    def square(x):
        seen.append((x, threading.get_ident()))
        time.sleep(0.002)  # releases the GIL, as decoding does
        return x * x

    with Workers(3) as workers:
        finish = workers.start_map(square, range(60))  # the pool threads start now
        assert finish() == [x * x for x in range(60)]  # in order
        assert workers.map(square, []) == []
    assert sorted(x for x, _ in seen) == list(range(60))  # each item once
    threads = {t for _, t in seen}
    assert threading.get_ident() in threads and len(threads) <= 3  # 3 threads do the work, the caller too
    assert Workers(1).map(square, [3]) == [9]


def test_workers_raise_what_an_item_raised_after_running_the_rest():
    ran = []

    def picky(x):
        ran.append(x)
        if x == 7:
            raise ValueError("seven")
        return x

    with Workers(2) as workers, pytest.raises(ValueError, match="seven"):
        workers.map(picky, range(20))
    assert sorted(ran) == list(range(20))


def test_workers_run_n_items_at_once_whoever_calls_them():
    """A Ray actor's shards in flight call `map` from their own threads, each caller working too: two
    callers on Workers(2) ran 3 items at once (k callers + n - 1 pool threads), more threads than the
    actor's CPUs."""
    lock, running, most = threading.Lock(), [0], [0]

    def work(x):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        return x

    with Workers(2) as workers:
        results = {}
        callers = [threading.Thread(target=lambda c=c: results.setdefault(c, workers.map(work, range(40))))
                   for c in range(3)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
    assert results == {c: list(range(40)) for c in range(3)} and most[0] == 2


def shard_contents(out_dir, name: str) -> list:
    """Every member of an output shard; records without their `pipeline` (run time, worker)."""
    with tarfile.open(out_dir / "shards" / f"{name}.tar") as tar:
        return [(m.name, {k: v for k, v in json.loads(tar.extractfile(m).read()).items() if k != "pipeline"}
                 if m.name.endswith(".json") else tar.extractfile(m).read()) for m in tar]


def test_next_shard_opened_ahead_changes_nothing(tmp_path):
    """The local executor tells the processor which shard comes next, which it opens and starts
    decoding before committing this one. Outputs equal those of shards processed one by one; a next
    shard that is not the one given, or cannot be opened, meets its own turn as usual."""
    from vlm_aug.pipeline import ShardProcessor
    from vlm_aug.record import RunContext

    shards = [str(p) for p in make_shards(tmp_path / "in", 3, 9)]  # shard 0 has a broken image

    def processor(out):
        cfg = load_config(None, [f"input.paths=['{shards[0]}']", f"output.path={out}", "dry_run=true",
                                 "input.decode_workers=2", "vlm.batch_size=2"])  # 4-sample batches: 3 a shard
        out.mkdir()
        return ShardProcessor(cfg, RunContext(cfg.sha256()))

    alone, ahead = processor(tmp_path / "alone"), processor(tmp_path / "ahead")
    try:
        expected = [alone.process(url) for url in shards]
        missing = str(tmp_path / "in" / "missing.tar")
        got = [ahead.process(shards[0], then=shards[1]), ahead.process(shards[1], then=missing),
               ahead.process(shards[2], then=shards[0])]
        assert ahead._opened is not None and ahead._opened.url == shards[0]
        # a shard that cannot be read fails (not committed: a rerun reads it again), alone or after another
        with pytest.raises(FileNotFoundError):
            alone.process(missing)
        with pytest.raises(FileNotFoundError):
            ahead.process(missing)  # not the shard opened ahead: that one is closed, this one read now
        assert ahead._opened is None and not (tmp_path / "ahead/shards/missing.stats.json").exists()
    finally:
        alone.close()
        ahead.close()
    for a, b in zip(expected, got):
        assert (a["counts"], a["reasons"], a["input"], a["read_error"]) == (b["counts"], b["reasons"], b["input"],
                                                                            b["read_error"])
    assert expected[0]["reasons"] == {"error:decode_error": 1} and len(got) == 3
    for name in ("000000", "000001", "000002"):
        assert shard_contents(tmp_path / "ahead", name) == shard_contents(tmp_path / "alone", name)


def test_executor_auto(tmp_path, monkeypatch):
    small = tmp_path / "000000.tar"
    small.write_bytes(b"\0" * 10240)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(None, [f"input.paths=['{small}']", f"output.path={tmp_path / 'out'}"])
    assert cfg.executor == "auto"
    name, why = resolve_executor(cfg, [str(small)])
    assert name == "local" and "--executor ray" in why
    big = tmp_path / "000001.tar"
    with big.open("wb") as handle:  # sparse: over the preview size without writing it
        handle.truncate(PREVIEW_BYTES + 1)
    assert resolve_executor(cfg, [str(small), str(big)])[0] == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert resolve_executor(cfg, [str(small)]) == ("ray", "a Ray cluster is given")
    forced = load_config(None, [f"input.paths=['{small}']", f"output.path={tmp_path / 'out'}", "executor=local"])
    assert resolve_executor(forced, [str(big)])[0] == "local"


def scene_stages(**generation):
    from vlm_aug.config import load_config
    from vlm_aug.paths import configs_dir
    from vlm_aug.stages.rewrite import RewriteStage
    from vlm_aug.stages.score import ScoreStage

    sets = ["vlm.model=vlm_aug:scene_vlm", "clip.model=vlm_aug:scene_clip", "vlm.batch_size=3",
            *[f"generation.{k}={v}" for k, v in generation.items()]]
    cfg = load_config(configs_dir() / "demo.yaml", sets)
    rewrite, score = RewriteStage(cfg.vlm, cfg.generation, cfg.limits), ScoreStage(cfg.clip)
    rewrite.setup()
    score.setup()
    return rewrite, score


def scene_samples(tmp_path):
    from vlm_aug.lab.scenes import write_scene_shards
    from vlm_aug.shards.read import ShardReader

    [shard] = write_scene_shards(tmp_path, 1, 10, seed=3, wrong_fraction=0.3)
    batch = list(ShardReader(str(shard), "txt", ["png"], 1 << 20))
    decode_samples(batch, 1 << 24, 1 << 20)
    batch[4].fail("decode_error", "made inactive: prepare must skip it")
    return batch


def outputs(batch):
    return [(s.status, s.caption_rewrite, s.generation.seed, s.generation.new_tokens, s.scores) for s in batch]


def test_prepared_inputs_give_the_same_rewrites_and_scores(tmp_path):
    """Processor tensors and CLIP pixels made ahead (as the prefetch thread does, here on 2 threads)
    are used, and give what the stages compute inline, with sampling on (per-sample seeds)."""
    rewrite, score = scene_stages(do_sample="true", temperature=1.5)
    inline, ahead = scene_samples(tmp_path / "a"), scene_samples(tmp_path / "b")
    for stage in (rewrite, score):
        stage.process_batch(inline)
    with Workers(2) as pool:
        rewrite.prepare(ahead, pool)
        score.prepare(ahead, pool)
    groups = [s for s in ahead if "rewrite" in s.prepared]
    assert len(groups) == 3 and sum("score" in s.prepared for s in ahead) == 9  # 9 active, 3 per call
    for stage in (rewrite, score):
        stage.process_batch(ahead)
    assert all(not s.prepared for s in ahead)  # every prepared input was taken
    assert outputs(ahead) == outputs(inline)
    assert len({s.caption_rewrite for s in ahead if s.active}) > 3


def test_inputs_prepared_for_other_groups_are_not_used(tmp_path):
    """run_stage isolates a failing sample by calling the stage on one sample at a time: the groups
    then differ from the prepared ones, and the stage computes its inputs itself."""
    rewrite, score = scene_stages()
    inline, ahead = scene_samples(tmp_path / "a"), scene_samples(tmp_path / "b")
    rewrite.prepare(ahead)
    assert sum("rewrite" in s.prepared for s in ahead) == 3
    for batch in (inline, ahead):  # in pairs, backwards: a group's first sample meets other samples
        for i in range(len(batch) - 1, 0, -2):
            rewrite.process_batch([batch[i], batch[i - 1]])
    assert outputs(ahead) == outputs(inline)


def test_ray_worker_lock_holds_models_only_and_waits_are_kept_apart(tmp_path):
    """Under Ray an actor runs several shards in threads and one model batch at a time. `decide`
    (no model) used to take the model lock too, and its timer counted the wait for another shard's
    generate: 9.7 s of "decide" in the issue. Now it runs beside the lock, and a model stage's wait
    is returned by take_wait_s (the pipeline files it under model_wait)."""
    import threading
    import time

    from vlm_aug.config import PolicyConfig
    from vlm_aug.executors.ray_actor import LockedStage, ModelMeter
    from vlm_aug.stages.decide import DecideStage

    rewrite, score = scene_stages()
    batch = scene_samples(tmp_path)
    rewrite.process_batch(batch)
    meter = ModelMeter()
    locked_score, locked_decide = LockedStage(score, meter), LockedStage(DecideStage(PolicyConfig()), meter)
    waited = {}

    def score_then_decide():
        locked_score.process_batch(batch)
        waited["score"] = locked_score.take_wait_s()
        locked_decide.process_batch(batch)
        waited["decide"] = locked_decide.take_wait_s()

    with meter.lock:  # another shard's batch holds the models
        decide_alone = threading.Thread(target=locked_decide.process_batch, args=(scene_samples(tmp_path / "b"),))
        decide_alone.start()
        decide_alone.join(10)
        assert not decide_alone.is_alive()  # decide did not wait for the models
        worker = threading.Thread(target=score_then_decide)
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive() and "score" not in waited  # the model stage waits its turn
    worker.join(30)
    assert waited["score"] >= 0.25 and waited["decide"] == 0.0
    assert all(s.scores.get("clip_orig") is not None and s.status != "pending" for s in batch if s.reason != "decode_error")
    assert locked_score.take_wait_s() == 0.0 and meter.busy_s > 0  # taken once; busy time is the model's only


def test_pillow_keeps_freed_image_memory_unless_the_user_set_it(monkeypatch):
    """Decoded photos reuse the memory of the last batch's (Pillow's block allocator, off by default):
    raised to one read batch, never lowered, and PILLOW_BLOCKS_MAX wins."""
    from PIL import Image

    from vlm_aug.pipeline import keep_image_memory

    before = Image.core.get_blocks_max()
    try:
        Image.core.set_blocks_max(0)
        monkeypatch.setenv("PILLOW_BLOCKS_MAX", "0")
        keep_image_memory(64)
        assert Image.core.get_blocks_max() == 0
        monkeypatch.delenv("PILLOW_BLOCKS_MAX")
        keep_image_memory(64)
        assert Image.core.get_blocks_max() == 64
        keep_image_memory(16)
        assert Image.core.get_blocks_max() == 64
        payloads = [image_bytes((400 + i, 300), (i * 50, 90, 30), "PNG") for i in range(4)]
        for _ in range(2):  # decoding still gives the right pixels when blocks are reused
            batch = [Sample(key=f"k{i}", shard="s", image_bytes=p, image_ext="png") for i, p in enumerate(payloads)]
            decode_samples(batch, 1 << 24, 1 << 22)
            assert [s.image.size for s in batch] == [(400 + i, 300) for i in range(4)]
            assert [s.image.getpixel((399, 299)) for s in batch] == [(i * 50, 90, 30) for i in range(4)]
    finally:
        Image.core.set_blocks_max(before)


def test_a_prepare_that_raises_drops_only_its_own_stages_inputs(tmp_path):
    from collections import defaultdict

    from vlm_aug.pipeline import ShardProcessor
    from vlm_aug.record import RunContext

    class Pixels:
        name = "pixels"

        def prepare(self, samples, pool=None):
            for s in samples:
                s.prepared[self.name] = s.key

    class Broken:
        name = "broken"

        def prepare(self, samples, pool=None):
            for s in samples[:1]:
                s.prepared[self.name] = "half made"
            raise RuntimeError("prepare failed half way")

    cfg = load_config(None, [f"output.path={tmp_path}"])
    processor = ShardProcessor(cfg, RunContext("0" * 64), stages=[Pixels(), Broken()])
    batch = [Sample(key=f"k{i}", shard="s.tar") for i in range(3)]
    processor._ready(batch, lambda: None, defaultdict(float))
    assert [s.prepared for s in batch] == [{"pixels": f"k{i}"} for i in range(3)]


def test_next_shard_prepared_ahead_with_the_models_changes_nothing(tmp_path):
    """With models (a prefetch thread), the next shard's first batch is decoded and prepared while the
    model works on this shard's last batches: records equal those of shards processed one by one."""
    from vlm_aug.lab.scenes import write_scene_shards
    from vlm_aug.paths import configs_dir
    from vlm_aug.pipeline import ShardProcessor
    from vlm_aug.record import RunContext

    shards = [str(p) for p in write_scene_shards(tmp_path / "in", 2, 10, seed=5, wrong_fraction=0.3)]

    def processor(out):
        cfg = load_config(configs_dir() / "demo.yaml", [
            f"input.paths=['{shards[0]}']", f"output.path={out}", "vlm.batch_size=2", "input.decode_workers=2",
            "generation.do_sample=true", "generation.temperature=1.5", "torch_threads=1"])
        out.mkdir()
        return ShardProcessor(cfg, RunContext(cfg.sha256()))

    alone, ahead = processor(tmp_path / "alone"), processor(tmp_path / "ahead")
    try:
        expected = [alone.process(url) for url in shards]
        got = [ahead.process(shards[0], then=lambda: shards[1])]
        assert ahead._opened.url == shards[1] and ahead._opened.pending[0][1] is None  # decoded and prepared
        first = ahead._opened.pending[0][0]
        assert any("rewrite" in s.prepared for s in first) and all("score" in s.prepared for s in first if s.active)
        got.append(ahead.process(shards[1]))
    finally:
        alone.close()
        ahead.close()
    assert [s["counts"] for s in got] == [s["counts"] for s in expected]
    for name in ("000000", "000001"):
        assert shard_contents(tmp_path / "ahead", name) == shard_contents(tmp_path / "alone", name)


def test_decode_threads_default_to_half_of_the_workers_own_cores(tmp_path):
    """`input.decode_workers` unset: half the worker's cores, 1 to 4; all of them, 1 to 4, in a dry run
    (no model needs a core). A Ray actor counts the CPUs Ray reserved for it, not the node's: an actor of
    1 CPU on a 64-core node took 4 decode threads before, beside its neighbours' (the sizing read
    os.cpu_count()). The actor here is the real ShardWorker class, run without Ray on a real shard (dry
    run), its threads counted where they run; with a model, its processor is sized without loading it."""
    import torch

    from vlm_aug.executors.ray_actor import ShardWorker
    from vlm_aug.record import RunContext

    shard = str(make_shards(tmp_path / "in", 1, 12)[0])

    def worker(cpus, *sets):
        cfg = load_config(None, [f"input.paths=['{shard}']", f"output.path={tmp_path / 'out'}", "dry_run=true",
                                 "tune_malloc=false", "vlm.batch_size=2", *sets])
        (tmp_path / "out").mkdir(exist_ok=True)
        return ShardWorker(cfg, RunContext(cfg.sha256()), 0, torch.get_num_threads(), cpus=cpus)

    seen = {}
    for cpus in (1, 2, 3, 4, 8, 64, 0.5):
        w = worker(cpus)
        names = set()
        real = w.processor.stages[0].process_batch
        # decode pools other tests in this process left behind are not this worker's
        before = {t.ident for t in threading.enumerate() if t.name.startswith("vlm_aug-decode")}

        def watched(batch, real=real):
            names.update(t.ident for t in threading.enumerate()
                         if t.name.startswith("vlm_aug-decode") and t.ident not in before)
            return real(batch)

        w.processor.stages[0].process_batch = watched
        try:
            stats = w.process(shard)
            pool = w.processor.decode_pool()
            # pool threads = decode_workers - 1 (the calling thread is one of them); the pool starts them
            # as work comes and reuses an idle one, so fewer may have run: at least one did, never more
            ran = min(len(names), 1)
            assert len(names) <= (pool.n - 1 if pool else 0)
            seen[cpus] = (w.processor.decode_workers, w.metrics()["decode_workers"], pool.n if pool else 1, ran)
        finally:
            w.processor.close()
        assert stats["counts"]["inputs"] == 12
    assert seen == {1: (1, 1, 1, 0), 2: (2, 2, 2, 1), 3: (3, 3, 3, 1), 4: (4, 4, 4, 1), 8: (4, 4, 4, 1),
                    64: (4, 4, 4, 1), 0.5: (1, 1, 1, 0)}
    from vlm_aug.pipeline import ShardProcessor

    modelled = load_config(None, [f"input.paths=['{shard}']", f"output.path={tmp_path / 'out'}"])
    halves = {cpus: ShardProcessor(modelled, RunContext(modelled.sha256()), cores=cpus).decode_workers
              for cpus in (1, 2, 3, 4, 8, 64, 0.5)}
    assert halves == {1: 1, 2: 1, 3: 1, 4: 2, 8: 4, 64: 4, 0.5: 1}
    w = worker(64, "input.decode_workers=3")  # the user's setting wins
    try:
        assert w.processor.decode_workers == 3
    finally:
        w.processor.close()


def test_usable_cpus_follow_the_process_affinity():
    """The local executor sizes torch's and the decode threads from the CPUs this process may run on
    (taskset, a cpuset), not from the machine's count."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_getaffinity") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs Linux CPU affinity and 2 CPUs")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from vlm_aug.workers import usable_cpus, default_decode_workers; "
            "print(usable_cpus(), os.cpu_count(), default_decode_workers())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "1" and int(out[1]) >= 2 and out[2] == "1"


def test_prefetch_thread_stops_when_its_consumer_stops_early():
    """Ctrl-C or an error in the consumer: the producing thread is told to stop and waited for, so it is
    not left inside torch or Pillow while the interpreter exits (that aborted the process with 'terminate
    called without an active exception', exit 134, in one Ctrl-C of four)."""
    import threading

    from vlm_aug.pipeline import prefetch

    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    before = set(threading.enumerate())
    batches = prefetch(items(), depth=2)
    assert next(batches) == 0
    batches.close()  # what an exception or KeyboardInterrupt in the consumer does to the generator
    assert not [t for t in threading.enumerate() if t not in before]  # not blocked behind a full queue
    assert len(produced) <= 5  # it stopped producing, instead of running on (or blocking) behind a full queue


def test_a_failed_shard_stops_its_prefetch_thread_at_once(tmp_path):
    """A model stage that fails every sample fails the shard: its prefetch thread is stopped before `process`
    returns. It was stopped only when the generator was collected, which a reference cycle (the error,
    its traceback, the frames) put off until the cycle collector ran, reading and decoding meanwhile."""
    import gc
    import threading

    from vlm_aug.lab.scenes import write_scene_shards
    from vlm_aug.pipeline import ShardProcessor
    from vlm_aug.record import RunContext
    from vlm_aug.stages.passthrough import PassThroughStage

    class Broken(PassThroughStage):  # a model stage that fails on every sample, alone too: the worker's fault
        uses_model = True

        def process_batch(self, samples):
            raise RuntimeError("the model failed")

    (shard,) = write_scene_shards(tmp_path / "in", 1, 64, seed=3)
    cfg = load_config(None, [f"input.paths=['{shard}']", f"output.path={tmp_path / 'out'}", "input.decode_workers=1",
                             "vlm.batch_size=4"])
    (tmp_path / "out").mkdir()
    processor = ShardProcessor(cfg, RunContext(cfg.sha256()), stages=[Broken()])
    gc.disable()
    try:
        with pytest.raises(RuntimeError, match="the model failed"):
            processor.process(str(shard))
        alive = [t.name for t in threading.enumerate() if t.name == "vlm_aug-prefetch"]
    finally:
        gc.enable()
        processor.close()
    assert alive == []


def test_shards_in_flight_share_one_decode_pool(tmp_path):
    """A Ray actor's shards in flight ask for the decode pool at once: two pools were made in 59 of 300
    tries (the threads switching often), one of them left to be collected."""
    import sys
    import threading

    from vlm_aug.pipeline import ShardProcessor
    from vlm_aug.record import RunContext

    cfg = load_config(None, [f"output.path={tmp_path}", "input.decode_workers=2"])
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    made = []
    try:
        for _ in range(300):
            processor = ShardProcessor(cfg, RunContext("0" * 64), stages=[])
            got = []
            threads = [threading.Thread(target=lambda: got.append(processor.decode_pool())) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            made.append(len({id(p) for p in got}))
            for pool in got:
                pool.shutdown()
    finally:
        sys.setswitchinterval(interval)
    assert set(made) == {1}


def test_images_are_re_encoded_ahead_on_the_host_threads_not_the_models(tmp_path, monkeypatch):
    """PNG scenes written as JPEG (output.normalize_image_format: jpg) with the models: each re-encode
    is made in the prefetch and decode threads, ahead, and none on the thread that drives the models,
    where the writer made them all while the accelerator waited; the members are the same JPEG bytes."""
    import threading

    from vlm_aug.lab.scenes import write_scene_shards
    from vlm_aug.paths import configs_dir
    from vlm_aug.pipeline import ShardProcessor
    from vlm_aug.record import RunContext
    from vlm_aug.shards import images

    (shard,) = write_scene_shards(tmp_path / "in", 1, 24, seed=5, wrong_fraction=0.0)
    threads, real = [], images._encode

    def encode(sample, target):  # the real encoder, noting the thread it runs on
        threads.append(threading.current_thread().name)
        return real(sample, target)

    monkeypatch.setattr(images, "_encode", encode)
    cfg = load_config(configs_dir() / "demo.yaml", [
        f"input.paths=['{shard}']", f"output.path={tmp_path / 'out'}", "vlm.batch_size=4", "input.decode_workers=2",
        "output.normalize_image_format=jpg", "torch_threads=1", "policy.name=fallback"])
    (tmp_path / "out").mkdir()
    processor = ShardProcessor(cfg, RunContext(cfg.sha256()))
    try:
        stats = processor.process(str(shard))
    finally:
        processor.close()
    assert stats["counts"]["kept"] > 0 and stats["timings_s"]["encode"] > 0
    assert len(threads) >= stats["counts"]["kept"] and threading.main_thread().name not in threads
    assert all(t.startswith(("vlm_aug-prefetch", "vlm_aug-decode")) for t in threads), threads
    inputs = {}
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".png"):
                inputs[m.name[:-4]] = tar.extractfile(m).read()
    with tarfile.open(tmp_path / "out/shards/000000.tar") as tar:
        written = {m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")}
    assert len(written) == stats["counts"]["kept"]
    for key, data in written.items():
        again = io.BytesIO()
        Image.open(io.BytesIO(inputs[key])).convert("RGB").save(again, format="JPEG", quality=95)
        assert data == again.getvalue(), key
