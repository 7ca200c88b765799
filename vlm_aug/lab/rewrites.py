"""Run the rewrite stage alone over input shards and write one JSON line per sample: the tool that
compares engines (the vllm engine runs in .venv-vllm, where CLIP cannot be imported) and times them.

    python -m vlm_aug.lab.rewrites --config configs/demo.yaml --set vlm.engine=vllm \\
        --out rewrites.jsonl IN/*.tar
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vlm_aug.config import load_config
from vlm_aug.shards.decode import decode_samples
from vlm_aug.shards.read import ShardReader, expand_inputs
from vlm_aug.stages.rewrite import RewriteStage


def rewrite_shards(config, inputs: list[str], out_path: Path) -> dict:
    """-> timings and counts; writes `out_path` (JSON lines: shard, key, rewrite, new_tokens, seed, status)."""
    stage = RewriteStage(config.vlm, config.generation, config.limits)
    start = time.perf_counter()
    stage.setup()
    setup_s = time.perf_counter() - start
    window = config.vlm.window if stage.engine.per_call is None else max(config.vlm.batch_size * 2, 16)
    lim = config.limits
    n = tokens = 0
    generate_s = 0.0
    parts: dict = {}  # named parts of generate_s (vllm: vlm_preprocess, its image preprocessing)
    with out_path.open("w", encoding="utf-8") as out:
        for url in inputs:
            samples = list(ShardReader(url, config.input.caption_key, config.input.image_exts, lim.max_member_bytes,
                                               lim.max_caption_bytes))
            for begin in range(0, len(samples), window):
                batch = samples[begin:begin + window]
                decode_samples(batch, lim.max_image_pixels, lim.max_image_bytes)
                t = time.perf_counter()
                stage.process_batch(batch)
                generate_s += time.perf_counter() - t
                for part, seconds in stage.take_timings().items():
                    parts[part] = parts.get(part, 0.0) + seconds
                for s in batch:
                    n += 1
                    tokens += s.generation.new_tokens or 0
                    out.write(json.dumps({"shard": url.rsplit("/", 1)[-1], "key": s.key, "rewrite": s.caption_rewrite,
                                          "new_tokens": s.generation.new_tokens, "seed": s.generation.seed,
                                          "status": s.status, "reason": s.reason}) + "\n")
    return {"engine": stage.describe()["engine"], "samples": n, "new_tokens": tokens, "setup_s": round(setup_s, 2),
            "generate_s": round(generate_s, 2), "parts_s": {k: round(v, 3) for k, v in parts.items()},
            "samples_per_s": round(n / generate_s, 2) if generate_s else None,
            "tokens_per_s": round(tokens / generate_s, 1) if generate_s else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlm_aug.lab.rewrites", description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="input shards (paths, globs or brace patterns)")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", required=True, type=Path, help="JSON lines, one per sample")
    ap.add_argument("--summary", type=Path, help="also write the timings and counts as JSON here")
    args = ap.parse_args(argv)
    config = load_config(args.config, args.set)
    summary = rewrite_shards(config, expand_inputs(args.inputs), args.out)
    text = json.dumps(summary, sort_keys=True)
    if args.summary:
        args.summary.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
