"""Bench inputs: scene shards and the models to run on them (shipped scene models, else tiny random)."""

from __future__ import annotations

from pathlib import Path

from vlm_aug.config import Config, load_config
from vlm_aug.paths import ASSETS_DIR, configs_dir


def models(workdir: Path) -> tuple[str, str, str]:
    """-> (vlm, clip, label). The shipped scene models when present, else tiny random ones."""
    if (ASSETS_DIR / "scene_vlm" / "config.json").exists() and (ASSETS_DIR / "scene_clip").is_dir():
        return "vlm_aug:scene_vlm", "vlm_aug:scene_clip", "shipped scene models (trained)"
    from vlm_aug.lab.tiny import build_tiny_clip, build_tiny_vlm

    vlm, clip = workdir / "tiny_vlm", workdir / "tiny_clip"
    if not vlm.exists():
        build_tiny_vlm(vlm)
        build_tiny_clip(clip)
    return str(vlm), str(clip), "tiny random models (scene models not found)"


def shards(workdir: Path, n: int, per_shard: int) -> list[Path]:
    from vlm_aug.lab.scenes import write_scene_shards

    target = workdir / f"scenes_{n}x{per_shard}"
    if not (target / f"{n - 1:06d}.tar").exists():
        write_scene_shards(target, n, per_shard, seed=7, wrong_fraction=0.2)
    return sorted(target.glob("*.tar"))[:n]


def config(vlm: str, clip: str, inputs: list[Path], out: Path, **sets) -> Config:
    overrides = [f"vlm.model={vlm}", f"clip.model={clip}", f"output.path={out}", "output.report=false", "report.semantic=false",
                 "input.paths=[" + ",".join(f"'{p}'" for p in inputs) + "]"]
    overrides += [f"{k.replace('__', '.')}={v}" for k, v in sets.items()]
    return load_config(configs_dir() / "demo.yaml", overrides)
