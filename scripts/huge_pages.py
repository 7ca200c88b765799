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

from vlm_aug.lab.bench.realistic import write_realistic_shards  # noqa: E402
from vlm_aug.lab.bench.setup import models, shards  # noqa: E402

# one fresh process: the host path on 1 and 2 threads (as a worker runs it), then the steps one at a time
HOST_CHILD = """
import json, sys
from pathlib import Path
from vlm_aug.lab.bench.realistic import host_costs, host_path_rate
shards = [Path(p) for p in json.loads(sys.argv[1])]
host_path_rate(shards[:1], 1)  # warm-up: imports, page cache
rates = {w: host_path_rate(shards, w) for w in (1, 2)}
costs = host_costs(shards)
print(json.dumps({"samples_s": rates, "vlm_processor_ms": costs["ms_per_sample"]["vlm_processor"],
                  "host_ms": costs["host_ms_per_sample"], "malloc": costs["malloc"]}))
"""

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


def alternate(child: str, argv: list[str], rounds: int, name: str) -> dict:
    """`child` run in a fresh process with torch's huge pages (`THP_MEM_ALLOC_ENABLE=1`; Ray's workers
    inherit it from the session the child starts) and without (4 KB pages, as a worker runs), the two
    alternating `rounds` times. -> {"huge": [...], "4k": [...]}: what each run printed last (json)."""
    out: dict[str, list] = {"huge": [], "4k": []}
    for _ in range(rounds):
        for arm in out:
            env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
            if arm == "huge":
                env["THP_MEM_ALLOC_ENABLE"] = "1"
            done = subprocess.run([sys.executable, "-c", child, *argv], env=env, capture_output=True, text=True,
                                  check=True)
            out[arm].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {name}, {arm}: {out[arm][-1]}", flush=True)
    return out


def host_summary(rounds: dict) -> dict:
    """Medians of the host-path arms, and huge ÷ 4 KB for each."""
    picks = {"samples_s_1": lambda r: r["samples_s"]["1"], "samples_s_2": lambda r: r["samples_s"]["2"],
             "vlm_processor_ms": lambda r: r["vlm_processor_ms"], "host_ms": lambda r: r["host_ms"]}
    summary = {arm: {name: round(statistics.median(pick(r) for r in rounds[arm]), 3) for name, pick in picks.items()}
               for arm in rounds}
    summary["huge_vs_4k"] = {name: round(summary["huge"][name] / summary["4k"][name], 3) for name in picks}
    summary["rounds"] = rounds
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write the rounds and medians to this json file")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vlm_aug_huge_pages_"))
    try:
        print("host path, realistic JPEGs (512): huge pages and 4 KB pages, fresh processes, alternating", flush=True)
        realistic = write_realistic_shards(work / "realistic", 8, 64)
        host = host_summary(alternate(HOST_CHILD, [json.dumps([str(p) for p in realistic])], args.rounds, "host path"))
        vlm, clip, label = models(work)
        print(f"Ray on 16 x 128 scene samples ({label}): fresh sessions, alternating", flush=True)
        scenes = json.dumps([str(p) for p in shards(work, 16, 128)])
        ray = alternate(RAY_CHILD, [vlm, clip, scenes, str(work)], args.rounds, "ray")
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
