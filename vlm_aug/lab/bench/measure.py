"""One function per thing measured; each returns samples/s (or bytes) for the same shards."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from vlm_aug.config import Config
from vlm_aug.run import execute
from vlm_aug.sample import Sample
from vlm_aug.shards.decode import decode_samples
from vlm_aug.shards.read import ShardReader
from vlm_aug.stages.rewrite import RewriteStage
from vlm_aug.stages.score import ScoreStage


def paired(rounds: int, **runs) -> dict[str, list]:
    """Each measure `rounds` times, alternating (a, b, a, b, ...), so that a slow spell of a shared
    machine falls on both sides of a ratio. -> name -> the values, in order."""
    values: dict[str, list] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            values[name].append(run())
    return values


def best(values: list):
    """The fastest of repeated measurements (samples/s, or a pipeline result by its samples/s): the
    least disturbed by other work on the machine, as timeit takes the minimum time."""
    return max(values, key=lambda v: v["samples_s"] if isinstance(v, dict) else v)


def median(values: list) -> float:
    """The median of repeated measurements (samples/s, or pipeline results by their samples/s),
    reported beside the best: a figure that only the least disturbed rounds reach shows as such."""
    return statistics.median(v["samples_s"] if isinstance(v, dict) else v for v in values)


def pipeline(cfg: Config) -> dict:
    """End-to-end through `execute`; samples/s excludes model loading / Ray start-up."""
    manifest = execute(cfg, overwrite=True, progress=False).manifest
    t = manifest["timings"]
    samples = manifest["totals"]["inputs"]
    busy = max(t["wall_s"] - t["startup_s"], 1e-9)
    return {"samples": samples, "wall_s": t["wall_s"], "startup_s": t["startup_s"], "samples_s": samples / busy,
            "stages_s": t["stages_s"], "workers": manifest.get("workers", {})}


def decoded_samples(cfg: Config, inputs: list[Path]) -> list:
    samples = []
    for url in inputs:
        batch = list(ShardReader(str(url), cfg.input.caption_key, cfg.input.image_exts, cfg.limits.max_member_bytes,
                                         cfg.limits.max_caption_bytes))
        decode_samples(batch, cfg.limits.max_image_pixels, cfg.limits.max_image_bytes)
        samples += [s for s in batch if s.active]
    return samples


def loaded_models(cfg: Config) -> tuple[RewriteStage, ScoreStage]:
    rewrite, score = RewriteStage(cfg.vlm, cfg.generation, cfg.limits), ScoreStage(cfg.clip)
    rewrite.setup()
    score.setup()
    return rewrite, score


def _models_on(rewrite: RewriteStage, score: ScoreStage, batch: list) -> None:
    """The model work of one batch and nothing else: the stages' own generate and CLIP scoring."""
    rewrite.generate(batch)
    score.process_batch(batch)


def bare(cfg: Config, inputs: list[Path], models) -> float:
    """Same models, same batches, pre-decoded images: what the models alone allow."""
    samples, seconds = bare_timed(cfg, inputs, models)
    return samples / seconds


def bare_timed(cfg: Config, inputs: list[Path], models) -> tuple[int, float]:
    """`bare`'s loop: -> (samples, seconds of model work)."""
    samples = decoded_samples(cfg, inputs)
    samples.sort(key=lambda s: len(s.caption_orig))
    size = cfg.vlm.batch_size
    start = time.perf_counter()
    for i in range(0, len(samples), size):
        _models_on(*models, samples[i:i + size])
    return len(samples), time.perf_counter() - start


def naive(cfg: Config, inputs: list[Path], models, limit: int = 64) -> float:
    """What a user writes first: one sample at a time, same models."""
    samples = decoded_samples(cfg, inputs)[:limit]
    start = time.perf_counter()
    for sample in samples:
        _models_on(*models, [sample])
    return len(samples) / (time.perf_counter() - start)


def tar_copy(inputs: list[Path], out_dir: Path) -> float:
    """A plain tarfile copy of the same shards: the floor for any I/O path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = 0
    start = time.perf_counter()
    for path in inputs:
        with tarfile.open(path) as src, tarfile.open(out_dir / path.name, "w") as dst:
            for member in src:
                dst.addfile(member, src.extractfile(member))
                samples += member.name.endswith(".txt")
    return samples / (time.perf_counter() - start)


def demo_wall(out: Path) -> float:
    """Wall seconds of `vlm-aug demo` in a fresh process, as a user runs it (start-up included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlm_aug.cli", "demo", "--output", str(out), "--no-progress"],
                   capture_output=True, text=True, check=True)
    return round(time.perf_counter() - start, 2)


PEAK_RSS = """
import json, resource, sys
from vlm_aug.config import Config
from vlm_aug.run import execute
execute(Config.model_validate_json(sys.argv[1]), overwrite=True, progress=False)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss_mb(cfg: Config) -> float:
    """Peak resident memory of a fresh process running the local executor on `cfg`."""
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, cfg.model_dump_json()], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


# each child: argv = its two json arguments, the barrier folder, how many start together, its index
IN_STEP = """
import json, sys, time
from pathlib import Path
from vlm_aug.config import Config
from vlm_aug.run import execute
warm, cfg, ready, n = (Config.model_validate_json(sys.argv[1]), Config.model_validate_json(sys.argv[2]),
                       Path(sys.argv[3]), int(sys.argv[4]))
execute(warm, overwrite=True, progress=False)  # imports, page cache, first model load
(ready / sys.argv[5]).touch()
while len(list(ready.iterdir())) < n:  # start together
    time.sleep(0.01)
t = execute(cfg, overwrite=True, progress=False).manifest
print(json.dumps({"samples": t["totals"]["inputs"], "busy_s": t["timings"]["wall_s"] - t["timings"]["startup_s"]}))
"""

BARE_IN_STEP = """
import json, sys, time
from pathlib import Path
import torch
from vlm_aug.config import Config
from vlm_aug.lab.bench.measure import bare_timed, loaded_models
from vlm_aug.malloc import tune_malloc
cfg, inputs, ready, n = (Config.model_validate_json(sys.argv[1]), [Path(p) for p in json.loads(sys.argv[2])],
                         Path(sys.argv[3]), int(sys.argv[4]))
torch.set_num_threads(1)
tune_malloc(cfg.tune_malloc)  # as a worker's process does
models = loaded_models(cfg)
bare_timed(cfg, inputs[:1], models)  # warm-up: first calls, allocator, page cache
(ready / sys.argv[5]).touch()
while len(list(ready.iterdir())) < n:  # start together
    time.sleep(0.01)
samples, seconds = bare_timed(cfg, inputs, models)
print(json.dumps({"samples": samples, "busy_s": seconds}))
"""


def _in_step(script: str, arguments: list[tuple[str, str]], barrier: Path) -> float:
    """Run `script` in one process per pair of arguments, started together; -> all the samples over the
    slowest process's time, as a run of several workers is done when the last one is."""
    barrier.mkdir(parents=True, exist_ok=True)
    for stale in barrier.iterdir():
        stale.unlink()
    procs = [subprocess.Popen([sys.executable, "-c", script, first, second, str(barrier), str(len(arguments)), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, (first, second) in enumerate(arguments)]
    done = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a bench process exited with {proc.returncode}:\n{err.strip()[-2000:]}")
        done.append(json.loads(out.strip().splitlines()[-1]))
    return sum(d["samples"] for d in done) / max(d["busy_s"] for d in done)


def processes_in_step(warm: list[Config], cfgs: list[Config], barrier: Path) -> float:
    """Samples/s of independent local runs in separate processes, started together after a warm-up
    (no Ray): what the machine gives several workers when nothing coordinates them."""
    return _in_step(IN_STEP, [(w.model_dump_json(), c.model_dump_json()) for w, c in zip(warm, cfgs)], barrier)


def bare_in_step(cfg: Config, parts: list[list[Path]], barrier: Path) -> float:
    """Samples/s of the bare model loop (`bare`, 1 torch thread) in one process per part of the shards,
    started together: what the machine gives several copies of the models with nothing around them
    (no reading, decoding or writing beside them), the ceiling of any worker pair's scaling."""
    return _in_step(BARE_IN_STEP, [(cfg.model_dump_json(), json.dumps([str(p) for p in part])) for part in parts],
                    barrier)


class _RayDataCaptioner:
    """The map_batches callable of the straightforward Ray Data pipeline."""

    def __init__(self, cfg_json: str):
        self.cfg = Config.model_validate_json(cfg_json)
        self.rewrite, self.score = loaded_models(self.cfg)

    def __call__(self, batch: dict) -> dict:
        import io

        from PIL import Image

        samples = [Sample(key=k, shard="ray-data", image=Image.open(io.BytesIO(b)).convert("RGB"),
                          caption_orig=c.decode() if isinstance(c, bytes) else c)
                   for k, b, c in zip(batch["__key__"], batch["png"], batch["txt"])]
        _models_on(self.rewrite, self.score, samples)
        return {"__key__": batch["__key__"], "png": batch["png"],
                "txt": [s.caption_rewrite.encode() for s in samples],
                "json": [json.dumps({"clip_rewrite": s.scores["clip_rewrite"]}).encode() for s in samples]}


def ray_data(cfg: Config, inputs: list[Path], out_dir: Path) -> dict:
    """read_webdataset -> map_batches(same models) -> write_webdataset, one model actor."""
    import ray

    start = time.perf_counter()
    ds = ray.data.read_webdataset([str(p) for p in inputs], decoder=None)
    ds = ds.map_batches(_RayDataCaptioner, fn_constructor_args=(cfg.model_dump_json(),),
                        batch_size=cfg.vlm.batch_size, concurrency=1, num_cpus=1)
    ds.write_webdataset(str(out_dir), encoder=None)  # members are bytes already
    wall = time.perf_counter() - start
    samples = sum(1 for p in inputs for m in tarfile.open(p).getnames() if m.endswith(".txt"))
    return {"samples": samples, "wall_s": wall, "samples_s": samples / wall}
