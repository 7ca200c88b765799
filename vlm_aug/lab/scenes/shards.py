"""Scene samples and WebDataset shards of them (png image, terse caption, json ground truth)."""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlm_aug.lab.scenes.world import (
    Scene, dense_description, render, sample_scene, terse_caption, wrong_terse_caption,
)
from vlm_aug.shards.write import add_member


@dataclass
class SceneSample:
    scene: Scene
    image: Image.Image
    terse: str
    dense: str
    terse_wrong: bool
    wrong: dict | None = None

    def to_json(self) -> dict:
        data = {"truth": self.scene.to_json(), "dense": self.dense, "terse_wrong": self.terse_wrong}
        if self.wrong:
            data["wrong"] = self.wrong
        return data


def make_sample(rng: random.Random, image_size: int = 64, wrong: bool = False) -> SceneSample:
    """One random scene with its image, a terse caption (wrong if asked) and its dense description."""
    scene = sample_scene(rng)
    image = render(scene, image_size)
    if wrong:
        terse, detail = wrong_terse_caption(scene, rng)
    else:
        terse, detail = terse_caption(scene, rng), None
    return SceneSample(scene, image, terse, dense_description(scene.objects), wrong, detail)


def shard_rng(seed: int, shard_index: int) -> random.Random:
    # String seeds hash with sha512: stable across runs and Python versions.
    return random.Random(f"vlm_aug.scenes/{seed}/{shard_index}")  # the old module path: a seed, keep it


def shard_samples(seed: int, shard_index: int, n: int, wrong_fraction: float = 0.0,
                  image_size: int = 64) -> list[SceneSample]:
    """The samples of one shard; exactly round(n * wrong_fraction) of them have a wrong caption."""
    rng = shard_rng(seed, shard_index)
    n_wrong = round(n * wrong_fraction)
    wrong_slots = set(rng.sample(range(n), n_wrong))
    return [make_sample(rng, image_size, i in wrong_slots) for i in range(n)]


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_scene_shards(out_dir, n_shards: int, samples_per_shard: int, seed: int,
                       wrong_fraction: float = 0.0, image_size: int = 64) -> list[Path]:
    """Write `000000.tar`, ... with `KEY.png`, `KEY.txt` (terse caption), `KEY.json` per sample."""
    if not 0.0 <= wrong_fraction <= 1.0:
        raise ValueError(f"wrong_fraction must be in [0, 1], got {wrong_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(n_shards):
        path = out_dir / f"{shard:06d}.tar"
        samples = shard_samples(seed, shard, samples_per_shard, wrong_fraction, image_size)
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, sample in enumerate(samples):
                key = f"{shard:06d}_{i:06d}"
                add_member(tar, f"{key}.png", png_bytes(sample.image))
                add_member(tar, f"{key}.txt", sample.terse.encode("utf-8"))
                meta = json.dumps(sample.to_json(), sort_keys=True).encode("utf-8")
                add_member(tar, f"{key}.json", meta)
        paths.append(path)
    return paths
