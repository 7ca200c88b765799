"""Builders for test shards: real tar files with real image bytes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def image_bytes(size=(48, 40), color=(200, 30, 30), fmt="JPEG", mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else None).save(buffer, fmt)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, caption: str, image: bytes | None = None, meta: dict | None = None,
                   ext: str = "jpg") -> list[tuple[str, bytes]]:
    members = [(f"{key}.{ext}", image if image is not None else image_bytes())]
    members.append((f"{key}.txt", caption.encode("utf-8")))
    members.append((f"{key}.json", json.dumps(meta or {"key": key}).encode()))
    return members


def make_shards(root: Path, n_shards: int = 2, per_shard: int = 8, broken: bool = True) -> list[Path]:
    """`n_shards` shards of `per_shard` samples; with `broken`, sample 3 of shard 0 has no valid image."""
    colors = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 30)]
    paths = []
    for s in range(n_shards):
        members = []
        for i in range(per_shard):
            key = f"s{s:02d}_{i:04d}"
            image = image_bytes((40 + 4 * i, 48), colors[i % 4])
            if broken and s == 0 and i == 3:
                image = b"this is not an image"
            members += sample_members(key, f"a {['red', 'green', 'blue', 'yellow'][i % 4]} square", image,
                                      {"key": key, "url": f"http://example.invalid/{key}.jpg"})
        paths.append(write_tar(root / f"{s:06d}.tar", members))
    return paths


def tiny_args(vlm_dir, clip_dir, *extra: str) -> list[str]:
    """`--set` overrides that point a run at the tiny local models and accept every score."""
    sets = {"vlm.model": vlm_dir, "clip.model": clip_dir, "clip.pretrained": "null",
            "generation.max_new_tokens": 8, "policy.min_clip_orig": -1, "policy.min_clip_rewrite": -1,
            "policy.max_drop": 2, "executor": "local", "torch_threads": 1,
            "report.semantic": "false",  # the semantic figures have their own tests (test_semantic.py)
            # the tiny random VLM's text never ends a sentence within 8 tokens, so the guards would cut
            # every rewrite; they have their own tests (test_guards.py), with the tiny VLMs too
            "generation.guards": "false"}
    args = []
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args + list(extra)
