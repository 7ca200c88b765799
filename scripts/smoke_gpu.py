#!/usr/bin/env python
"""GPU smoke test, offline: the shipped scene VLM and CLIP through the whole pipeline on the GPU.

    .venv/bin/python scripts/smoke_gpu.py [--device cuda] [--no-ray] [--no-vllm] [--out DIR]

Needs no network and no cached model (the scene models ship with the package). It writes 2 scene
shards of 32 samples, then runs `vlm-aug run configs/demo.yaml` on them:

1. on the CPU (the reference);
2. on `--device` with the local executor;
3. on `--device` with the Ray executor (2 actors; on one GPU they take half of it each);
4. with `vlm.engine: vllm` on `--device`, when vLLM is importable here.

Each GPU run must finish every shard, record `generation.device` on the device asked for in every
sample, and keep samples; the greedy rewrites are compared with the CPU's (float32 on both, so they
mostly agree; the count is printed, not required). Exit 0 when every check holds, 1 otherwise, with
what failed. `--device cpu` runs the same checks on the CPU (what the tests do).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (the checks alone)")
    p.add_argument("--out", help="work folder (default: a temporary one, kept)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    p.add_argument("--no-vllm", action="store_true", help="skip the vLLM run even when vLLM is importable")
    p.add_argument("--samples", type=int, default=32, help="samples per shard (2 shards)")
    return p.parse_args(argv)


def records(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for parquet in sorted((out / "shards").glob("*.parquet")):
        rows += [json.loads(r) for r in pq.read_table(parquet, columns=["provenance"]).column("provenance").to_pylist()]
    return rows


def run(name: str, shards: Path, out: Path, *sets: str, executor: str = "local") -> tuple[int, float]:
    from vlm_aug.cli import main

    argv = ["run", "configs/demo.yaml", "--input", str(shards / "*.tar"), "--output", str(out), "--overwrite",
            "--no-progress", "--no-report", "--executor", executor, "--set", "report.semantic=false",
            *[x for s in sets for x in ("--set", s)]]
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    print(f"smoke_gpu: {name}: exit {code} in {seconds:.1f} s", flush=True)
    return code, seconds


def check(name: str, out: Path, device: str, expected: int, reference: dict, problems: list[str]) -> None:
    found = records(out)
    rewrites = {r["key"]: r["caption_rewrite"] for r in found}
    devices = sorted({(r.get("generation") or {}).get("device") or "?" for r in found if r["status"] != "error"})
    kept = sum(r["status"] == "kept" for r in found)
    same = sum(rewrites.get(k) == v for k, v in reference.items())
    print(f"  {len(found)} samples, {kept} kept, generation.device {devices}, "
          f"{same} of {len(reference)} greedy rewrites as on the CPU")
    if len(found) != expected:
        problems.append(f"{name}: {len(found)} samples written, {expected} expected")
    if not devices or any(not d.startswith(device.split(":")[0]) for d in devices):
        problems.append(f"{name}: generation.device {devices}, not {device}")
    if kept == 0:
        problems.append(f"{name}: no sample kept")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(Path(__file__).resolve().parents[1])  # configs/demo.yaml
    import torch

    from vlm_aug.lab.scenes import write_scene_shards

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"smoke_gpu: --device {args.device}, but torch {torch.__version__} sees no CUDA device "
              f"(CUDA build: {torch.version.cuda or 'no'})", file=sys.stderr)
        return 1
    work = Path(args.out or tempfile.mkdtemp(prefix="vlm_aug_smoke_gpu_"))
    shards = work / "in"
    write_scene_shards(shards, 2, args.samples, seed=11)
    expected = 2 * args.samples
    if torch.cuda.is_available():
        print(f"smoke_gpu: {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}; work folder {work}")
    problems: list[str] = []
    code, _ = run("cpu reference", shards, work / "cpu", "vlm.device=cpu", "clip.device=cpu")
    if code != 0:
        print("smoke_gpu: the CPU reference run failed; nothing to compare with", file=sys.stderr)
        return 1
    reference = {r["key"]: r["caption_rewrite"] for r in records(work / "cpu")}
    on = [f"vlm.device={args.device}", f"clip.device={args.device}", "vlm.dtype=float32"]
    code, _ = run(f"local on {args.device}", shards, work / "local", *on)
    if code == 0:
        check("local", work / "local", args.device, expected, reference, problems)
    else:
        problems.append(f"local on {args.device}: exit {code}")
    if not args.no_ray:
        ray_sets = ["ray.num_actors=2", "ray.num_cpus_per_actor=1"]
        if args.device.startswith("cuda") and torch.cuda.device_count() < 2:
            ray_sets.append("ray.num_gpus_per_actor=0.5")  # both actors on the one GPU
        elif not args.device.startswith("cuda"):
            ray_sets.append("ray.num_gpus_per_actor=0")
        code, _ = run(f"ray on {args.device}", shards, work / "ray", *on, *ray_sets, executor="ray")
        if code == 0:
            check("ray", work / "ray", args.device, expected, reference, problems)
        else:
            problems.append(f"ray on {args.device}: exit {code}")
    if not args.no_vllm and importlib.util.find_spec("vllm") is not None:
        code, _ = run(f"vllm on {args.device}", shards, work / "vllm", *on, "vlm.engine=vllm",
                      "vlm.vllm.gpu_memory_utilization=0.5")
        if code == 0:
            check("vllm", work / "vllm", args.device, expected, reference, problems)
        else:
            problems.append(f"vllm on {args.device}: exit {code}")
    elif not args.no_vllm:
        print("smoke_gpu: vLLM is not importable here: its run skipped (pip install vllm on a CUDA machine)")
    if problems:
        print("smoke_gpu: FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"smoke_gpu: every check held on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
