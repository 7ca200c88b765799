"""The CLIP that the A/B trains: named presets, any open_clip model name, or a config JSON file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vlm_aug.lab.downstream import DownstreamError

# What each preset is for (shown in docs/downstream.md); builders below return open_clip model_cfgs.
PRESET_NOTES = {
    "tiny": "test-sized ViT (32 px, 1 layer); seconds per run, measures plumbing, not quality",
    "scene": "the scene-world CLIP architecture (64 px conv tower, 3-layer text, 4.6 M params); ~0.3 s/step",
    "cpu-small": "small ViT (96 px, patch 12, 4+4 layers, 9.0 M params); a laptop CPU, ~1.2 s/step at batch 64",
    "gpu": "open_clip's ViT-B-32 (224 px, ~150 M params) from scratch; one GPU",
}


def _tiny() -> dict:
    from vlm_aug.lab.tiny import tiny_clip_config

    return tiny_clip_config(32, patch_size=8, vision_width=32, vision_layers=1, text_width=32,
                            text_layers=1, heads=2, embed_dim=32, context_length=32)


def _scene() -> dict:
    from vlm_aug.lab.scenes.train_clip import scene_clip_config

    return scene_clip_config(64)


def _cpu_small() -> dict:
    return {"embed_dim": 128,
            "vision_cfg": {"image_size": 96, "layers": 4, "width": 192, "head_width": 64, "patch_size": 12},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4}}


PRESETS = {"tiny": _tiny, "scene": _scene, "cpu-small": _cpu_small}
BUILTIN_ALIASES = {"gpu": "ViT-B-32"}


@dataclass(frozen=True)
class ModelChoice:
    """What the trainer gets as `--model`, and the config file it must register first (if any)."""

    name: str
    config_path: Optional[str]
    source: str

    def describe(self) -> dict:
        cfg = json.loads(Path(self.config_path).read_text()) if self.config_path else None
        return {"name": self.name, "source": self.source, "model_cfg": cfg}


def _model_cfg_from_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DownstreamError(f"model config {path} is not readable JSON: {exc}") from exc
    cfg = data.get("model_cfg", data) if isinstance(data, dict) else None  # local-dir layout too
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= cfg.keys():
        raise DownstreamError(f"model config {path} needs embed_dim, vision_cfg and text_cfg "
                              "(an open_clip model config, or an open_clip_config.json)")
    return cfg


def resolve_model(spec: str, work_dir: Path) -> ModelChoice:
    """`tiny|scene|cpu-small|gpu`, an open_clip model name (e.g. ViT-B-32), or a config JSON path."""
    import open_clip

    if spec in BUILTIN_ALIASES:
        return ModelChoice(BUILTIN_ALIASES[spec], None, f"preset {spec}")
    if spec in PRESETS:
        cfg, name, source = PRESETS[spec](), f"vlmaug-{spec}", f"preset {spec}"
    elif spec.endswith(".json") or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise DownstreamError(f"model config file {spec} does not exist")
        cfg, name, source = _model_cfg_from_file(path), f"vlmaug-custom-{path.stem}", f"file {path}"
    elif spec in open_clip.list_models():
        return ModelChoice(spec, None, "open_clip built-in config")
    else:
        raise DownstreamError(f"unknown model {spec!r}: use a preset ({', '.join([*PRESETS, *BUILTIN_ALIASES])}), "
                              "an open_clip model name (open_clip.list_models()) or a model config .json")
    models_dir = work_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    config_path = models_dir / f"{name}.json"  # open_clip names a registered config by its file stem
    config_path.write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")
    return ModelChoice(name, str(config_path), source)


def register(choice: ModelChoice) -> None:
    """Make the model name known to open_clip in this process (the evaluator's side)."""
    import open_clip

    if choice.config_path:
        open_clip.add_model_config(choice.config_path)
