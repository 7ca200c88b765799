#!/usr/bin/env python
"""The engines against each other on fresh scenes (issue 16's acceptance): rewrites, decisions and kept
counts of `openai` (the full pipeline against a real `vllm serve` on loopback) and of `vllm` (vllm.LLM in
.venv-vllm, the rewrite stage alone, then scored and decided here by the same CLIP and policy), each
compared with the `hf` engine's full pipeline. Shipped scene models, float32, greedy.

    .venv/bin/python scripts/compare_engines.py [--scenes 512] [--seed 2026] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlm_aug.cli import main as cli  # noqa: E402
from vlm_aug.config import load_config  # noqa: E402
from vlm_aug.lab.scenes.shards import write_scene_shards  # noqa: E402
from vlm_aug.lab.vllm_server import VLLMServer, engine_python  # noqa: E402
from vlm_aug.paths import configs_dir, resolve_builtin  # noqa: E402
from vlm_aug.shards.decode import decode_samples  # noqa: E402
from vlm_aug.shards.read import ShardReader  # noqa: E402
from vlm_aug.stages.decide import DecideStage  # noqa: E402
from vlm_aug.stages.score import ScoreStage  # noqa: E402

DEMO = configs_dir() / "demo.yaml"


def records(out: Path) -> dict[tuple, dict]:
    found = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    r = json.load(t.extractfile(m))
                    found[(tar.stem, r["key"])] = r
    return found


def pipeline(inputs: Path, out: Path, *sets: str) -> float:
    start = time.perf_counter()
    code = cli(["run", str(DEMO), "--input", str(inputs / "*.tar"), "--output", str(out), "--no-progress",
                "--no-report", "--executor", "local", "--overwrite", *[x for s in sets for x in ("--set", s)]])
    if code != 0:
        raise SystemExit(f"vlm-aug run {' '.join(sets)} exited {code}")
    return time.perf_counter() - start


def decide_here(inputs: Path, rewrites: dict[tuple, str]) -> dict[tuple, dict]:
    """Score and decide the vllm engine's rewrites with this environment's CLIP and policy."""
    cfg = load_config(DEMO)
    score, decide = ScoreStage(cfg.clip), DecideStage(cfg.policy, cfg.generation.seed)
    score.setup()
    out = {}
    for tar in sorted(inputs.glob("*.tar")):
        samples = list(ShardReader(str(tar), cfg.input.caption_key, cfg.input.image_exts, cfg.limits.max_member_bytes))
        decode_samples(samples, cfg.limits.max_image_pixels, cfg.limits.max_image_bytes)
        for s in samples:
            s.caption_rewrite = rewrites[(tar.stem, s.key)]
        score.process_batch(samples)
        decide.process_batch(samples)
        for s in samples:
            out[(tar.stem, s.key)] = {"status": s.status, "reason": s.reason or "", "caption": s.caption}
    return out


def compare(name: str, ref: dict, rewrites: dict, decisions: dict) -> dict:
    keys = sorted(ref)
    same_rewrite = sum(rewrites[k] == ref[k]["caption_rewrite"] for k in keys)
    same_decision = sum(decisions[k] == {"status": ref[k]["status"], "reason": ref[k]["reason"] or "",
                                         "caption": ref[k]["caption"]} for k in keys)
    kept = sum(d["status"] == "kept" for d in decisions.values())
    return {"engine": name, "samples": len(keys), "same_rewrite": same_rewrite,
            "same_rewrite_share": round(same_rewrite / len(keys), 4), "same_decision": same_decision,
            "kept": kept, "kept_hf": sum(r["status"] == "kept" for r in ref.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=512)
    ap.add_argument("--per-shard", type=int, default=128)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--wrong-fraction", type=float, default=0.2)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vlm_aug_compare_"))
    inputs = work / "in"
    write_scene_shards(inputs, args.scenes // args.per_shard, args.per_shard, seed=args.seed,
                       wrong_fraction=args.wrong_fraction)
    print(f"{args.scenes} fresh scenes (seed {args.seed}, {args.wrong_fraction:.0%} wrong terse captions) in {inputs}",
          flush=True)
    hf_s = pipeline(inputs, work / "out_hf")
    ref = records(work / "out_hf")
    results = []

    python = engine_python()
    jsonl = work / "vllm.jsonl"
    cmd = [str(python), "-m", "vlm_aug.lab.rewrites", "--config", str(DEMO), "--out", str(jsonl),
           str(inputs / "*.tar"), "--set", "vlm.engine=vllm", "--set", "vlm.vllm.max_model_len=256",
           "--set", "vlm.vllm.enforce_eager=true"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"vllm engine failed:\n{done.stderr[-3000:]}")
    vllm_rewrites = {(r["shard"].removesuffix(".tar"), r["key"]): r["rewrite"]
                     for r in map(json.loads, jsonl.read_text().splitlines())}
    results.append(compare("vllm (in the worker)", ref, vllm_rewrites, decide_here(inputs, vllm_rewrites)))

    with VLLMServer(resolve_builtin("vlm_aug:scene_vlm"), "vlm_aug:scene_vlm", log_path=work / "server.log",
                    python=python) as server:
        oa_s = pipeline(inputs, work / "out_openai", "vlm.engine=openai", f"vlm.endpoint={server.url}")
    served = records(work / "out_openai")
    results.append(compare("openai (vllm serve)", ref, {k: r["caption_rewrite"] for k, r in served.items()},
                           {k: {"status": r["status"], "reason": r["reason"] or "", "caption": r["caption"]}
                            for k, r in served.items()}))
    print(f"\nhf pipeline {hf_s:.1f} s, openai pipeline {oa_s:.1f} s (both wall, local executor)")
    print(f"{'engine':<22}{'same rewrite':>16}{'same decision':>15}{'kept':>7}{'kept hf':>9}")
    for r in results:
        print(f"{r['engine']:<22}{r['same_rewrite']:>6}/{r['samples']} ({r['same_rewrite_share']:.2%})"
              f"{r['same_decision']:>9}/{r['samples']}{r['kept']:>7}{r['kept_hf']:>9}")
    (work / "compare.json").write_text(json.dumps(results, indent=1))
    ok = all(r["same_rewrite_share"] >= 0.99 and r["kept"] == r["kept_hf"] for r in results)
    print(f"\n>= 99% identical rewrites and equal kept counts: {'met' if ok else 'MISSED'}  ({work / 'compare.json'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
