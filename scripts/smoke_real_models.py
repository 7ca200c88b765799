"""Smoke-test the real model presets: for every VLM preset found in the local Hugging Face cache
(or named with --presets), run 4 images through the whole pipeline (`vlm-aug run`) and print
the rewrites, CLIP scores and the revision that was loaded. Skips, saying so, when none is cached.

The first thing to run on a machine with network access:
    hf download HuggingFaceTB/SmolVLM-256M-Instruct
    hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K
    python scripts/smoke_real_models.py

On a GPU machine with vLLM installed (docs/engines.md), the first thing to run is
    python scripts/smoke_real_models.py --engine vllm
which runs each preset with the hf engine and with vllm and prints how many greedy rewrites agree.
`--engine openai --endpoint URL` does the same against a running server.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

DRAWN = [  # (size, caption, draw) - real JPEG bytes of different sizes when no --images are given
    ((640, 480), "a red circle", lambda d: d.ellipse((200, 120, 440, 360), fill=(220, 30, 30))),
    ((320, 640), "a blue bar", lambda d: d.rectangle((120, 40, 200, 600), fill=(30, 60, 220))),
    ((1024, 256), "two green squares", lambda d: [d.rectangle((x, 60, x + 140, 200), fill=(30, 180, 60))
                                                  for x in (200, 680)]),
    ((200, 200), "a yellow triangle", lambda d: d.polygon([(100, 20), (180, 180), (20, 180)], fill=(230, 210, 30))),
]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", help="VLM presets to run (default: every one in the local cache)")
    p.add_argument("--clip", help="CLIP preset (default: the first one cached; else a tiny random CLIP)")
    p.add_argument("--images", help="a folder of .jpg/.png photos (first 4 used; caption = sidecar .txt or name)")
    p.add_argument("--models-dir", action="append", default=[], help="also look for VLMs in DIR/<name>")
    p.add_argument("--out", help="output folder (default: a temporary one)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", choices=["hf", "vllm", "openai"], default="hf",
                   help="vllm / openai: run each preset with hf and with this engine, compare the rewrites")
    p.add_argument("--endpoint", help="--engine openai: the server's base URL (ending in /v1)")
    return p.parse_args(argv)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def load_images(folder) -> list[tuple[bytes, str]]:
    if folder is None:
        drawn = []
        for size, caption, draw in DRAWN:
            image = Image.new("RGB", size, (245, 245, 240))
            draw(ImageDraw.Draw(image))
            drawn.append((_jpeg(image), caption))
        return drawn
    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[:4]
    if not files:
        raise SystemExit(f"--images {folder}: no .jpg or .png files there")
    return [(_jpeg(Image.open(f)), f.with_suffix(".txt").read_text().strip() if f.with_suffix(".txt").is_file()
             else f.stem.replace("_", " ")) for f in files]


def write_shard(path: Path, images: list[tuple[bytes, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, (data, caption) in enumerate(images):
            for ext, payload in (("jpg", data), ("txt", caption.encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"smoke{i:02d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def clip_settings(name, work: Path) -> tuple[list[str], str]:
    from vlm_aug.config.presets import list_presets, load_preset, offline_location

    if name:
        return ["--set", f"clip.preset={load_preset(name, 'clip').name}"], name
    cached = [p for p in list_presets("clip") if offline_location(p)]
    if cached:
        return ["--set", f"clip.preset={cached[0].name}"], cached[0].name
    from vlm_aug.lab.tiny import build_tiny_clip

    tiny = build_tiny_clip(work / "tiny_clip")
    sets = {"clip.model": tiny, "clip.pretrained": "null", "policy.min_clip_orig": -1,
            "policy.min_clip_rewrite": -1, "policy.max_drop": 2}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")], "tiny random CLIP (no CLIP preset cached)"


def chosen_presets(args) -> list[tuple[object, str | None]]:
    """-> [(preset, local directory or None)]: named ones, else those found offline."""
    from vlm_aug.config.presets import list_presets, load_preset, offline_location

    if args.presets:
        found = [(load_preset(n, "vlm"), offline_location(load_preset(n, "vlm"), args.models_dir)) for n in args.presets]
    else:
        found = [(p, offline_location(p, args.models_dir)) for p in list_presets("vlm")]
        found = [(p, where) for p, where in found if where]
    return [(p, where.split(" ", 1)[1] if where and where.startswith("local ") else None) for p, where in found]


def print_rows(name: str, out: Path, seconds: float) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "shards/000000.parquet").to_pylist()
    generation = json.loads(rows[0]["provenance"])["generation"] if rows else {}
    engine = generation.get("engine", {})
    print(f"\n== {name}: {len(rows)} images in {seconds:.1f} s including model load, revision "
          f"{generation.get('revision')}, engine {engine.get('name')} {engine.get('version')}")
    for r in rows:
        print(f"  [{r['status']}{'/' + r['reason'] if r['reason'] else ''}] {r['caption_orig']!r}"
              f"  clip {r['clip_orig']} -> {r['clip_rewrite']}\n    {r['caption_rewrite']}")
    return rows


def main(argv=None) -> int:
    from vlm_aug.cli import main as vlm_aug_main

    args = parse_args(argv)
    presets = chosen_presets(args)
    if not presets:
        print("smoke_real_models: skipped - no VLM preset is in the local Hugging Face cache "
              "(see `vlm-aug models`). With network access: "
              "hf download HuggingFaceTB/SmolVLM-256M-Instruct, then rerun.")
        return 0
    work = Path(args.out or tempfile.mkdtemp(prefix="vlm_aug_smoke_"))
    shard = write_shard(work / "in/000000.tar", load_images(args.images))
    clip_args, clip_name = clip_settings(args.clip, work)
    print(f"smoke_real_models: {len(presets)} preset(s), CLIP: {clip_name}, output under {work}")
    failed = []
    engines = ["hf"] if args.engine == "hf" else ["hf", args.engine]
    if args.engine == "openai" and not args.endpoint:
        raise SystemExit("--engine openai needs --endpoint http://HOST:PORT/v1")
    for preset, local_dir in presets:
        rewrites = {}
        for engine in engines:
            rows = run_preset(vlm_aug_main, args, preset, local_dir, engine, shard, work, clip_args)
            if rows is None:
                failed.append(f"{preset.name} ({engine})")
                continue
            rewrites[engine] = [r["caption_rewrite"] for r in rows]
        if len(rewrites) == 2:
            same = sum(a == b for a, b in zip(*rewrites.values()))
            print(f"  {args.engine} vs hf: {same} of {len(rewrites['hf'])} greedy rewrites identical")
    if failed:
        print(f"\nsmoke_real_models: FAILED for {', '.join(failed)} (errors above)", file=sys.stderr)
    return 1 if failed else 0


def run_preset(vlm_aug_main, args, preset, local_dir, engine, shard, work, clip_args):
    from vlm_aug.paths import configs_dir

    out = work / f"{preset.name}-{engine}"
    argv = ["run", str(configs_dir() / "preview.yaml"), "--input", str(shard), "--output", str(out),
            "--overwrite", "--no-progress", "--no-report", "--executor", "local",  # 4 images: no Ray needed
            "--set", f"vlm.preset={preset.name}",
            "--set", f"vlm.device={args.device}", "--set", f"clip.device={args.device}",
            "--set", f"generation.max_new_tokens={args.max_new_tokens}", *clip_args]
    if local_dir:
        argv += ["--set", f"vlm.model={local_dir}"]
    argv += ["--set", f"vlm.engine={engine}"]
    if engine == "openai":
        argv += ["--set", f"vlm.endpoint={args.endpoint}", "--set", f"vlm.served_model_name={preset.hub_id}"]
    start = time.perf_counter()
    if vlm_aug_main(argv) != 0:
        return None
    title = preset.name if engine == "hf" else f"{preset.name} [{engine}]"
    return print_rows(title, out, time.perf_counter() - start)


if __name__ == "__main__":
    sys.exit(main())
