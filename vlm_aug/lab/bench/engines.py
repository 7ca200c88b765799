"""The engines side by side on the same shards: hf (transformers, this environment), vllm (vllm.LLM in
the engine environment .venv-vllm) and openai (this environment against a `vllm serve` on loopback).
Each runs the rewrite stage alone (`vlm_aug.lab.rewrites`) in a fresh process; start-up (model load,
server start) is reported apart from generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlm_aug.lab.vllm_server import VLLMServer, engine_python
from vlm_aug.paths import configs_dir, resolve_builtin

VLLM_SETS = ["vlm.engine=vllm", "vlm.vllm.max_model_len=256", "vlm.vllm.enforce_eager=true"]


def rewrite_run(python: str, inputs: list[Path], out: Path, sets: list[str], threads: int) -> dict:
    summary = out.with_suffix(".summary.json")
    cmd = [python, "-m", "vlm_aug.lab.rewrites", "--config", str(configs_dir() / "demo.yaml"), "--out", str(out),
           "--summary", str(summary), *map(str, inputs), *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{done.stderr[-3000:]}")
    result = json.loads(summary.read_text())
    result["process_wall_s"] = round(time.perf_counter() - start, 2)
    return result


def agreement(a: Path, b: Path) -> float:
    left = [json.loads(line)["rewrite"] for line in a.read_text().splitlines()]
    right = [json.loads(line)["rewrite"] for line in b.read_text().splitlines()]
    return sum(x == y for x, y in zip(left, right)) / max(1, len(left))


def compare_engines(inputs: list[Path], workdir: Path | None = None, threads: int = 2) -> dict:
    """-> {engine: {setup_s, generate_s, samples_per_s, tokens_per_s, same_as_hf}}."""
    work = Path(workdir or tempfile.mkdtemp(prefix="vlm_aug_engines_"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    out["hf"] = rewrite_run(sys.executable, inputs, work / "hf.jsonl", [], threads)
    python = engine_python()
    if not python.exists():
        out["note"] = f"{python} not found: bash scripts/setup.sh --vllm"
        return out
    out["vllm"] = rewrite_run(str(python), inputs, work / "vllm.jsonl", VLLM_SETS, threads)
    out["vllm"]["same_as_hf"] = round(agreement(work / "vllm.jsonl", work / "hf.jsonl"), 4)
    server = VLLMServer(resolve_builtin("vlm_aug:scene_vlm"), "vlm_aug:scene_vlm", log_path=work / "server.log",
                        python=python)
    start = time.perf_counter()
    with server:
        server_start = time.perf_counter() - start
        out["openai"] = rewrite_run(sys.executable, inputs, work / "openai.jsonl",
                                    ["vlm.engine=openai", f"vlm.endpoint={server.url}"], threads)
    out["openai"]["server_start_s"] = round(server_start, 2)
    out["openai"]["same_as_hf"] = round(agreement(work / "openai.jsonl", work / "hf.jsonl"), 4)
    return out


def vllm_render(shards: list[Path], workdir: Path) -> dict:
    """vLLM's image preprocessing against the HF processor's, per image, on `shards` (realistic JPEGs), in
    the engine environment (`vlm_aug.lab.bench.vllm_render`); {"note": ...} where there is none."""
    python = engine_python()
    if not python.exists():
        return {"note": f"{python} not found: bash scripts/setup.sh --vllm"}
    cmd = [str(python), "-m", "vlm_aug.lab.bench.vllm_render", "--model", str(Path(workdir) / "smolvlm_geometry"),
           *map(str, shards)]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(engines: dict) -> str:
    lines = [f"{'engine':<8}{'samples/s':>11}{'tokens/s':>10}{'start-up s':>12}{'same as hf':>12}"
             f"{'preprocessing':>15}"]
    for name in ("hf", "vllm", "openai"):
        r = engines.get(name)
        if not r:
            continue
        startup = r["setup_s"] + r.get("server_start_s", 0)
        same = f"{r['same_as_hf']:.4f}" if "same_as_hf" in r else "-"
        # the share of the stage's time vLLM spent preprocessing images, one after another (vllm engine)
        part = (r.get("parts_s") or {}).get("vlm_preprocess")
        share = f"{part / r['generate_s']:.0%}" if part and r.get("generate_s") else "-"
        lines.append(f"{name:<8}{r['samples_per_s']:>11.1f}{r['tokens_per_s']:>10.0f}{startup:>12.1f}{same:>12}"
                     f"{share:>15}")
    return "\n".join(lines)
