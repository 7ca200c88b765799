#!/usr/bin/env python
"""torch's tensors on transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`) against 4 KB pages, both sides.

    .venv/bin/python scripts/huge_pages.py [--rounds 3]     # ~10 min on 2 CPU cores

The host path on the realistic JPEGs (decode, SmolVLM's 512 px processor, CLIP's preprocessing), and
Ray's 1 and 2 actors on the 2,048 scene samples (1 torch thread each), every round in fresh
processes (a fresh Ray session for each), the two settings alternating. Prints the medians and
huge ÷ 4 KB; docs/performance.md ("Huge pages") quotes a run and says why vlm_aug leaves them off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlm_aug.lab.bench.realistic import huge_pages_rounds, huge_pages_summary, write_realistic_shards  # noqa: E402
from vlm_aug.lab.bench.setup import models, shards  # noqa: E402

# one fresh Ray session: 1 actor, 2 actors, twice each, on the scene shards; samples/s after start-up
RAY_CHILD = """
import json, sys
from pathlib import Path
import ray
from vlm_aug.lab.bench import measure
from vlm_aug.lab.bench.setup import config
vlm, clip, scenes, work = sys.argv[1], sys.argv[2], [Path(p) for p in json.loads(sys.argv[3])], Path(sys.argv[4])
ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False)
sets = dict(executor="ray", ray__num_cpus_per_actor=1, ray__torch_threads_per_actor=1)
out = {"1": [], "2": []}
for n in (1, 2, 1, 2):
    out[str(n)].append(measure.pipeline(config(vlm, clip, scenes, work / f"out_ray{n}", ray__num_actors=n, **sets))["samples_s"])
print(json.dumps(out))
"""


def ray_rounds(vlm: str, clip: str, scenes: list[Path], work: Path, rounds: int) -> dict:
    out: dict[str, list] = {"huge": [], "4k": []}
    for _ in range(rounds):
        for arm in out:
            env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
            if arm == "huge":
                env["THP_MEM_ALLOC_ENABLE"] = "1"  # Ray's workers inherit it from the session it starts
            done = subprocess.run([sys.executable, "-c", RAY_CHILD, vlm, clip, json.dumps([str(p) for p in scenes]),
                                   str(work)], env=env, capture_output=True, text=True, check=True)
            out[arm].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  ray, {arm}: {out[arm][-1]}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write the rounds and medians to this json file")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vlm_aug_huge_pages_"))
    try:
        print("host path, realistic JPEGs (512): huge pages and 4 KB pages, fresh processes, alternating", flush=True)
        host = huge_pages_summary(huge_pages_rounds(write_realistic_shards(work / "realistic", 8, 64), args.rounds))
        vlm, clip, label = models(work)
        print(f"Ray on 16 x 128 scene samples ({label}): fresh sessions, alternating", flush=True)
        ray = ray_rounds(vlm, clip, shards(work, 16, 128), work, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {arm: {n: statistics.median(x for r in ray[arm] for x in r[n]) for n in ("1", "2")} for arm in ray}
    rows = [("host path, 1 thread (samples/s)", host["huge"]["samples_s_1"], host["4k"]["samples_s_1"]),
            ("host path, 2 threads (samples/s)", host["huge"]["samples_s_2"], host["4k"]["samples_s_2"]),
            ("SmolVLM processor (ms a sample)", host["huge"]["vlm_processor_ms"], host["4k"]["vlm_processor_ms"]),
            ("host work (ms a sample, 1 core)", host["huge"]["host_ms"], host["4k"]["host_ms"]),
            ("Ray, 1 actor (samples/s)", med["huge"]["1"], med["4k"]["1"]),
            ("Ray, 2 actors (samples/s)", med["huge"]["2"], med["4k"]["2"]),
            ("Ray, 2 actors / 1", med["huge"]["2"] / med["huge"]["1"], med["4k"]["2"] / med["4k"]["1"])]
    print(f"\nmedians of {args.rounds} rounds{'':<14}{'huge':>9}{'4 KB':>9}{'huge/4KB':>10}")
    for name, huge, small in rows:
        print(f"{name:<40}{huge:>9.2f}{small:>9.2f}{huge / small:>10.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"host": host, "ray": ray, "ray_medians": med}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
