"""Realistic images for the host-path benchmark: shards of 512-1024 px JPEGs built from the colour
photos scikit-image ships (random crops, scales, flips and JPEG qualities: thousands of distinct
images), with hand-written captions; and per-sample CPU milliseconds of each host step.

    python -m vlm_aug.lab.bench.realistic [--samples 512]     # needs scikit-image
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

CAPTIONS = {  # looked at, not generated
    "astronaut": "an astronaut in a white spacesuit in front of a flag",
    "chelsea": "a ginger tabby cat looking to the side",
    "coffee": "a cup of coffee with latte art on a saucer",
    "rocket": "a rocket on its launch pad under a blue sky",
    "immunohistochemistry": "stained tissue under a microscope",
    "hubble_deep_field": "distant galaxies in deep space",
    "retina": "the back of a human eye with blood vessels",
    "colorwheel": "a wheel of blended colours",
    "cat": "a cat looking at the camera",
}
# Ceilings of docs/performance.md ("Engines"): captions/s per H100 at the compute ceiling, and the
# hf engine's per-step-overhead estimate for the 256M model.
CEILINGS = {"smolvlm-256m": 1600, "smolvlm-500m": 1100, "smolvlm2-2.2b": 285, "qwen2-vl-2b": 85,
            "qwen2.5-vl-3b": 58, "qwen2.5-vl-7b": 31, "llava-1.5-7b": 39}
HF_256M = 90


def _photos() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in CAPTIONS}


def realistic_image(photo: Image.Image, rng: random.Random) -> bytes:
    """A random crop (50-100% of each side), scaled so its longest side is 512-1024 px, maybe mirrored,
    saved as JPEG at quality 80-95: real web-image sizes (~40-250 KB)."""
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = photo.crop((x, y, x + cw, y + ch))
    scale = rng.randint(512, 1024) / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = ImageOps.mirror(crop)
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=rng.randint(80, 95))
    return buffer.getvalue()


def write_realistic_shards(out_dir, n_shards: int, per_shard: int, seed: int = 0) -> list[Path]:
    from vlm_aug.shards.write import add_member

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    photos, names = _photos(), sorted(CAPTIONS)
    paths = []
    for shard in range(n_shards):
        path = out_dir / f"{shard:06d}.tar"
        paths.append(path)
        if path.exists():
            continue
        rng = random.Random(f"vlm_aug.realistic/{seed}/{shard}")
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(per_shard):
                name = rng.choice(names)
                key = f"{shard:06d}_{i:06d}"
                add_member(tar, f"{key}.jpg", realistic_image(photos[name], rng))
                add_member(tar, f"{key}.txt", CAPTIONS[name].encode("utf-8"))
    return paths


def _processors():
    """SmolVLM's image processor at the presets' settings (one 512 px tile, no splitting; numbers, no
    weights) and ViT-B-32's CLIP preprocessing (resize, crop, normalise to 224 px); torch on 1 thread."""
    import open_clip
    import torch
    from transformers import Idefics3ImageProcessor

    torch.set_num_threads(1)
    vlm_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 512},
                                           max_image_size={"longest_edge": 512})
    return vlm_processor, open_clip.image_transform(224, is_train=False)


def read_samples(shards: list[Path]) -> list:
    from vlm_aug.shards.read import ShardReader

    return [s for url in shards for s in ShardReader(str(url), "txt", ["jpg"], 1 << 27)]


def host_costs(shards: list[Path]) -> dict:
    """Per-sample CPU milliseconds of each host step, measured one step at a time on one core, with the
    process's memory set as a pipeline worker sets it."""
    from vlm_aug.shards.decode import decode_samples
    from vlm_aug.shards.images import output_image

    memory = _as_the_pipeline_sets_up()
    vlm_processor, clip_preprocess = _processors()
    start = time.perf_counter()
    samples = read_samples(shards)
    read = time.perf_counter() - start
    n = len(samples)
    nbytes = sum(len(s.image_bytes) for s in samples)
    start = time.perf_counter()
    decode_samples(samples, 50_000_000, 1 << 26)
    decode = time.perf_counter() - start
    images = [s.image for s in samples]
    start = time.perf_counter()
    for i in range(0, n, 32):
        vlm_processor(images[i:i + 32], return_tensors="pt")
    vlm = time.perf_counter() - start
    start = time.perf_counter()
    for image in images:
        clip_preprocess(image)
    clip = time.perf_counter() - start
    start = time.perf_counter()
    for s in samples:  # the output image member: jpg stays byte for byte (output.normalize_image_format)
        output_image(s, "jpg")
    write = time.perf_counter() - start
    ms = {k: round(v * 1000 / n, 3) for k, v in
          {"read": read, "decode": decode, "vlm_processor": vlm, "clip_preprocess": clip, "write_image": write}.items()}
    total = sum(ms.values())
    ours = total - ms["vlm_processor"]  # with vllm or openai the VLM's processor runs in vLLM (vllm_render)
    return {"samples": n, "mean_kb": round(nbytes / n / 1024, 1), "ms_per_sample": ms,
            "host_ms_per_sample": round(total, 3),
            "cores_per_h100": {preset: round(rate * total / 1000, 1) for preset, rate in CEILINGS.items()},
            "cores_per_h100_hf_256m": round(HF_256M * total / 1000, 1),
            "cores_per_h100_without_vlm_processor": {preset: round(rate * ours / 1000, 1)
                                                     for preset, rate in CEILINGS.items()},
            "malloc": memory}


def host_path_rate(shards: list[Path], workers: int, batch: int = 64) -> float:
    """Samples/s of the host path as the pipeline's prefetch thread runs it for the `hf` engine:
    decode, SmolVLM's image processor per generate call (32 images) and CLIP's preprocessing per
    image, on `workers` threads (the calling one among them) as `input.decode_workers` does, with
    glibc and Pillow's memory set as a worker sets them."""
    from vlm_aug.workers import Workers

    _as_the_pipeline_sets_up(batch)
    processors = _processors()
    samples = read_samples(shards)
    pool = Workers(workers) if workers > 1 else None
    try:
        start = time.perf_counter()
        for i in range(0, len(samples), batch):
            part = samples[i:i + batch]
            _host_work(part, processors, pool)
            for s in part:
                s.image = None
        return len(samples) / (time.perf_counter() - start)
    finally:
        if pool:
            pool.shutdown()


_WORKER_PROCESSORS = None  # in a `host_path_rate_processes` worker: its processors, made once
_WORKER_RING = None  # and the shared slots it writes its tensors into (`reuse`), if the pool has them
SLOT_BYTES = 64 * 6 * 2**20  # one slot: a batch of 64 samples at ~5.6 MB of tensors each


def _start_host_worker(ring=None) -> None:
    """A pool process's initializer: glibc and Pillow's memory set as a pipeline worker sets them, then
    the two processors (torch on 1 thread); `ring`: the pool's shared slots (uint8, one row a slot)."""
    global _WORKER_PROCESSORS, _WORKER_RING
    _as_the_pipeline_sets_up()
    _WORKER_PROCESSORS, _WORKER_RING = _processors(), ring


def _as_the_pipeline_sets_up(batch: int = 64) -> str:
    """glibc's thresholds (`tune_malloc`) and Pillow's kept image memory for one read batch
    (`keep_image_memory`), as a pipeline worker sets them before its host path runs."""
    from vlm_aug.malloc import tune_malloc
    from vlm_aug.pipeline import keep_image_memory

    keep_image_memory(batch)
    return tune_malloc()


def _host_work(samples: list, processors, pool=None) -> tuple[list[dict], list]:
    """The host path of one batch: decode (the pipeline's `decode_samples`), SmolVLM's image processor
    per 32 images, CLIP's preprocessing per image; on `pool`'s threads when given. -> (the
    processor's tensors of each group of 32, CLIP's pixels of each image)."""
    from vlm_aug.shards.decode import decode_samples

    vlm_processor, clip_preprocess = processors
    each = pool.map if pool else map
    decode_samples(samples, 50_000_000, 1 << 26, pool)
    images = [s.image for s in samples if s.image is not None]
    groups = list(each(lambda group: dict(vlm_processor(group, return_tensors="pt")),
                       [images[j:j + 32] for j in range(0, len(images), 32)]))
    return groups, list(each(clip_preprocess, images))


def host_batch(blobs: list[bytes], processors=None) -> tuple[list[dict], torch.Tensor]:
    """`_host_work` on a batch of encoded images, CLIP's pixels stacked. In a pool process,
    `processors` is the process's own."""
    import torch

    from vlm_aug.sample import Sample

    samples = [Sample(key=str(i), shard="", image_bytes=blob) for i, blob in enumerate(blobs)]
    groups, pixels = _host_work(samples, processors or _WORKER_PROCESSORS)
    return groups, torch.stack(pixels)


def host_batch_into(slot: int, blobs: list[bytes]) -> tuple[int, list[tuple[int, tuple, str]]]:
    """`host_batch`, its tensors copied into row `slot` of the pool's shared ring instead of sent
    back: the ring's pages were mapped once, so no batch faults in fresh memory. -> (slot, each
    tensor's (byte offset, shape, dtype)); the groups' tensors first, in order, then CLIP's pixels."""
    import torch

    row, offset, where = _WORKER_RING[slot], 0, []
    for tensor in _tensors(host_batch(blobs)):
        data = tensor.contiguous().reshape(-1).view(torch.uint8)
        if offset + data.numel() > row.numel():
            raise ValueError(f"a batch's tensors take over {row.numel():,} bytes, the ring's slot: make the slots bigger")
        row[offset:offset + data.numel()].copy_(data)
        where.append((offset, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")))
        offset += -(-data.numel() // 64) * 64  # each tensor 64-byte aligned
    return slot, where


def _from_ring(ring, slot: int, where: list) -> list:
    """The tensors `host_batch_into` left in row `slot`, as views of the ring (valid until the slot is
    written again)."""
    import torch

    views = []
    for offset, shape, name in where:
        dtype = getattr(torch, name)
        views.append(ring[slot, offset:offset + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape))
    return views


def _tensors(made: tuple[list[dict], torch.Tensor]) -> list:
    """`host_batch`'s tensors in one list: each group's, in order, then CLIP's pixels."""
    groups, pixels = made
    return [t for g in groups for t in g.values()] + [pixels]


def _read_every_page(tensors: list) -> None:
    """What a consumer does with a batch it received (a copy to the device reads it all): one value
    per 4 KB page of every tensor, so that pages mapped from another process are faulted in."""
    for tensor in tensors:
        float(tensor.reshape(-1)[::4096 // tensor.element_size()].sum())


def host_pool(workers: int, ring=None):
    """A pool of `workers` processes that run `host_batch` (spawned, not forked: the parent has
    torch's threads); with `ring` (a shared uint8 tensor, one row a slot), `host_batch_into` too."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_host_worker,
                               initargs=(ring,))


def shared_ring(slots: int, slot_bytes: int = SLOT_BYTES):
    """`slots` rows of `slot_bytes` in shared memory, every page touched once (mapped for good)."""
    import torch

    ring = torch.empty(slots, slot_bytes, dtype=torch.uint8).share_memory_()
    ring.fill_(0)
    return ring


def host_path_rate_processes(shards: list[Path], workers: int, batch: int = 64, reuse: bool = False) -> float:
    """`host_path_rate`'s work in a pool of `workers` processes instead of threads: the parent reads
    the shards and sends each batch's encoded images; a process decodes them and runs both
    processors; the parent reads every page of the tensors it gets. They come back through fresh
    shared memory for every batch (torch's reductions for multiprocessing, which
    `concurrent.futures` uses), or with `reuse` through the slots of a shared ring mapped once
    (workers + 1 slots of 384 MB: a slot is written again only after the parent has read it).
    Samples/s after the pool has started (its processes spawned together, each making its processors
    as it starts, and `workers` batches done)."""
    blobs = [s.image_bytes for s in read_samples(shards)]
    batches = [blobs[i:i + batch] for i in range(0, len(blobs), batch)]
    if not reuse:
        with host_pool(workers) as pool:
            list(pool.map(host_batch, batches[:workers]))  # started
            start = time.perf_counter()
            for made in pool.map(host_batch, batches):
                _read_every_page(_tensors(made))
            return len(blobs) / (time.perf_counter() - start)
    slots = workers + 1
    ring = shared_ring(slots, SLOT_BYTES * batch // 64)
    with host_pool(workers, ring) as pool:
        list(pool.map(host_batch_into, range(workers), batches[:workers]))  # started
        start = time.perf_counter()
        pending = [pool.submit(host_batch_into, i, batches[i]) for i in range(min(slots, len(batches)))]
        for i in range(len(batches)):
            slot, where = pending.pop(0).result()
            _read_every_page(_from_ring(ring, slot, where))
            if i + slots < len(batches):  # this slot is read: the next batch may take it
                pending.append(pool.submit(host_batch_into, slot, batches[i + slots]))
        return len(blobs) / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlm_aug.lab.bench.realistic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.gettempdir()) / "vlm_aug_realistic"
    per = 64
    shards = write_realistic_shards(work, max(1, args.samples // per), per)
    result = host_costs(shards)
    rates = {w: round(host_path_rate(shards, w), 1) for w in (1, 2)}
    result["host_path_samples_s"] = rates
    result["host_path_2_vs_1"] = round(rates[2] / rates[1], 3)
    processes = {w: round(host_path_rate_processes(shards, w), 1) for w in (1, 2)}
    result["host_path_processes_samples_s"] = processes
    result["host_path_processes_2_vs_1"] = round(processes[2] / processes[1], 3)
    result["host_path_processes_vs_threads"] = round(processes[2] / rates[2], 3)
    reused = {w: round(host_path_rate_processes(shards, w, reuse=True), 1) for w in (1, 2)}
    result["host_path_reused_samples_s"] = reused
    result["host_path_reused_2_vs_1"] = round(reused[2] / reused[1], 3)
    result["host_path_reused_vs_threads"] = round(reused[2] / rates[2], 3)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
