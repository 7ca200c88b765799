"""vLLM's image preprocessing, measured where the `vllm` engine runs it.

vLLM turns each request's image into model inputs with its copy of the model's HF processor (its
"renderer"). In the offline `vllm.LLM`, which the `vllm` engine holds, it does so for one request
after another on the thread that calls it (vLLM 0.32 says so itself when `renderer_num_workers` is
set: "the offline `LLM` entrypoint uses the synchronous renderer path and runs multimodal
preprocessing serially across prompts"). `vllm serve` renders on one thread per API-server
process (`--api-server-count`). So that work is not spread over `input.decode_workers` as the `hf`
engine's processor is, and its cost per image bounds the captions/s of one `vllm.LLM`.

This times it on the realistic JPEGs (`realistic.write_realistic_shards`) with a tiny Idefics3 of
SmolVLM's image geometry (one 512 px tile of 16 px patches, `smolvlm_geometry_model`), against the
HF processor call that the `hf` engine makes on the same images in the same environment:
`LLM.enqueue` renders and queues the requests (with one process, as on CPU, the engine does not run
until `wait_for_completion`), and the calling thread's CPU time during it shows where it ran.

    .venv-vllm/bin/python -m vlm_aug.lab.bench.vllm_render --model DIR SHARD.tar ...

Prints one JSON object; `scripts/bench.py` runs it in the engine environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PROMPT = "Describe the image in detail."


def smolvlm_geometry_model(out_dir: Path) -> Path:
    """A randomly initialised tiny Idefics3 whose processor is SmolVLM-256M's at the presets' settings
    (no splitting, one 512 px tile of 16 px patches): its preprocessing costs what the real one's does."""
    from vlm_aug.lab.tiny import build_tiny_vlm

    if not (out_dir / "config.json").exists():
        build_tiny_vlm(out_dir, image_size=512, patch_size=16, vision_width=64, vision_layers=1,
                       text_width=128, text_layers=1, heads=4, max_positions=1024)
    return out_dir


def _images(shards: list[str]) -> list:
    from vlm_aug.lab.bench.realistic import read_samples
    from vlm_aug.shards.decode import decode_samples

    samples = read_samples([Path(url) for url in shards])
    decode_samples(samples, 50_000_000, 1 << 26)
    return [s.image for s in samples if s.active]


def _engines(model: str):
    """The `hf` and `vllm` engines on `model`, set up as a worker sets them up (configs/demo.yaml; one new
    token: only the preprocessing is timed)."""
    from vlm_aug.config import load_config
    from vlm_aug.paths import configs_dir
    from vlm_aug.stages.engines.hf import HFEngine
    from vlm_aug.stages.engines.vllm import VLLMEngine

    cfg = load_config(configs_dir() / "demo.yaml", [f"vlm.model={model}", "vlm.device=cpu", "generation.max_new_tokens=1",
                                                    "vlm.vllm.max_model_len=1024", "vlm.vllm.enforce_eager=true"])
    hf, vllm_engine = HFEngine(cfg.vlm, cfg.generation), VLLMEngine(cfg.vlm, cfg.generation)
    hf.setup()
    vllm_engine.setup()
    return hf, vllm_engine


def measure(model: str, shards: list[str], rounds: int = 2) -> dict:
    """-> per-image milliseconds of the `hf` engine's processor call (`HFEngine.encode`, `vlm.batch_size`
    images a call) and of vLLM's rendering of the `vllm` engine's prompts (`LLM.enqueue`), best of
    `rounds`, alternating; with the share of the rendering's wall time that the calling thread spent on
    its CPU."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as the engine sets it on CPU
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    import transformers
    import vllm

    from vlm_aug.stages.engines.base import Request

    torch.set_num_threads(1)
    images = _images(shards)
    if not images:
        raise ValueError(f"no decodable jpg images in {shards}")
    hf_engine, engine = _engines(model)
    requests = [Request(rendered_prompt=PROMPT, seed=i, image=image) for i, image in enumerate(images)]
    engine.generate(requests[:1])  # warm-up
    hf, render, on_thread = [], [], []  # ms an image, per round
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(requests), hf_engine.per_call):
            hf_engine.encode(requests[i:i + hf_engine.per_call])
        hf.append((time.perf_counter() - start) * 1000 / len(images))
        engine.llm.reset_mm_cache()  # the same images again: no cache hits
        start, cpu = time.perf_counter(), time.thread_time()
        ids = engine.llm.enqueue(engine.inputs(requests), engine.sampling(requests), use_tqdm=False)
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
        render.append(wall * 1000 / len(images))
        on_thread.append(cpu / wall)
        done = engine.llm.wait_for_completion(use_tqdm=False)
        if len(ids) != len(images) or len(done) != len(images):
            raise RuntimeError(f"vLLM queued {len(ids)} and finished {len(done)} of {len(images)} requests")
    best = min(range(rounds), key=lambda i: render[i])
    return {"images": len(images), "hf_processor_ms": round(min(hf), 3), "vllm_render_ms": round(render[best], 3),
            "render_on_calling_thread": round(on_thread[best], 3),
            "vllm_render_cap_per_llm": round(1000 / render[best], 1),
            "image_processor": type(hf_engine.processor.image_processor).__name__,
            "versions": {"vllm": vllm.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
            "rounds": {"hf_processor_ms": [round(v, 3) for v in hf], "vllm_render_ms": [round(v, 3) for v in render],
                       "render_on_calling_thread": [round(v, 3) for v in on_thread]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlm_aug.lab.bench.vllm_render", description=__doc__.split("\n\n")[0])
    ap.add_argument("shards", nargs="+", help="realistic JPEG shards (realistic.write_realistic_shards)")
    ap.add_argument("--model", type=Path, required=True, help="made by smolvlm_geometry_model if absent")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    result = measure(str(smolvlm_geometry_model(args.model)), args.shards, args.rounds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
