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
    from vlm_aug.shards.decode import decode_samples
    from vlm_aug.shards.read import ShardReader

    samples = [s for url in shards for s in ShardReader(url, "txt", ["jpg"], 1 << 27)]
    decode_samples(samples, 50_000_000, 1 << 26)
    return [s.image for s in samples if s.active]


def measure(model: str, shards: list[str], rounds: int = 2, batch: int = 32) -> dict:
    """-> per-image milliseconds of the HF processor call (as the `hf` engine makes it, `batch` images a
    call) and of vLLM's rendering (`LLM.enqueue`), best of `rounds`, alternating; with the share of
    the rendering's wall time that the calling thread spent on its CPU."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as the engine sets it on CPU
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    import transformers
    import vllm
    from vllm import LLM, SamplingParams

    from vlm_aug.stages.families import load_processor
    from vlm_aug.stages.prompts import chat_messages

    torch.set_num_threads(1)
    images = _images(shards)
    if not images:
        raise ValueError(f"no decodable jpg images in {shards}")
    processor = load_processor(model, model, {})
    prompt = processor.apply_chat_template(chat_messages(PROMPT), add_generation_prompt=True)
    llm = LLM(model=model, dtype="float32", max_model_len=1024, enforce_eager=True, max_num_seqs=64,
              limit_mm_per_prompt={"image": 1}, seed=0)
    params = SamplingParams(max_tokens=1, temperature=0.0)
    llm.generate([{"prompt": prompt, "multi_modal_data": {"image": images[0]}}], params, use_tqdm=False)
    hf, render, on_thread = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            processor(text=[prompt] * len(chunk), images=[[im] for im in chunk], padding=True, return_tensors="pt")
        hf.append((time.perf_counter() - start) * 1000 / len(images))
        llm.reset_mm_cache()  # the same images again: no cache hits
        start, cpu = time.perf_counter(), time.thread_time()
        ids = llm.enqueue([{"prompt": prompt, "multi_modal_data": {"image": im}} for im in images], params,
                          use_tqdm=False)
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
        render.append(wall * 1000 / len(images))
        on_thread.append(cpu / wall)
        done = llm.wait_for_completion(use_tqdm=False)
        if len(ids) != len(images) or len(done) != len(images):
            raise RuntimeError(f"vLLM queued {len(ids)} and finished {len(done)} of {len(images)} requests")
    best = min(range(rounds), key=lambda i: render[i])
    return {"images": len(images), "hf_processor_ms": round(min(hf), 3), "vllm_render_ms": round(render[best], 3),
            "render_on_calling_thread": round(on_thread[best], 3),
            "vllm_render_cap_per_llm": round(1000 / render[best], 1),
            "image_processor": type(processor.image_processor).__name__,
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
