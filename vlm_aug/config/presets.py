"""Model presets (`configs/models/*.yaml`): a named, tested set of vlm or clip settings.

A config refers to one as `vlm: {preset: qwen2.5-vl-3b}` or `clip: {preset: vit-l-14-datacomp}`;
the preset fills every field the config leaves out (processor_kwargs merge key by key), and a
VLM preset's prompt template fills `generation.prompt` when the config names none.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from vlm_aug.config.errors import ConfigError
from vlm_aug.paths import configs_dir

SECTION = {"vlm": "vlm", "clip": "clip"}  # preset kind -> config section it fills
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # "vlm" | "clip"
    hub_id: str
    params_b: float  # parameters, billions
    target: str  # "laptop" | "cluster" | "both"
    family: str = ""  # transformers model_type (vlm) or open_clip architecture (clip)
    max_image_tokens: Optional[int] = None  # per image, with the preset's processor settings
    batch_size_guidance: str = ""
    notes: str = ""
    sections: dict[str, dict] = field(default_factory=dict)  # config sections this preset fills
    path: str = ""

    @property
    def fields(self) -> dict[str, Any]:
        return self.sections[SECTION[self.kind]]

    def weights_gb(self, dtype: str) -> float:
        return self.params_b * DTYPE_BYTES[dtype]

    def memory_gb(self, dtype: str) -> float:
        """Rough peak: weights plus ~25% for activations, KV cache and CUDA context at the guided batch."""
        return round(self.weights_gb(dtype) * 1.25, 1)


def presets_dir() -> Path:
    return configs_dir() / "models"


KEYS = {f.name for f in dataclasses.fields(Preset)} - {"name", "hub_id", "sections", "path"}


def _parse(path: Path) -> Preset:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"model preset {path} is not valid YAML ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") not in SECTION:
        raise ConfigError(f"model preset {path} must be a mapping with kind: vlm or kind: clip")
    sections = {k: data.pop(k) for k in ("vlm", "clip", "generation") if k in data}
    section = SECTION[data["kind"]]
    if not isinstance(sections.get(section), dict) or "model" not in sections[section]:
        raise ConfigError(f"model preset {path} needs a `{section}:` section with a model")
    unknown = sorted(set(data) - KEYS - {"name"})
    if unknown:  # (a TypeError from the dataclass, which broke every preset lookup and `vlm-aug models`)
        raise ConfigError(f"model preset {path}: unknown key(s) {', '.join(unknown)}; a preset takes "
                          f"{', '.join(sorted(KEYS))} and the sections vlm, clip, generation")
    return Preset(hub_id=sections[section]["model"], sections=sections, path=str(path),
                  **{k: v for k, v in data.items() if k != "name"}, name=path.stem)


def list_presets(kind: Optional[str] = None) -> list[Preset]:
    """Every preset that parses; one that does not is named in a warning and left out, so a typo in
    one file does not hide the others."""
    presets = []
    for path in sorted(presets_dir().glob("*.yaml")):
        try:
            presets.append(_parse(path))
        except ConfigError as exc:
            print(f"vlm-aug: warning: {exc}; left out", file=sys.stderr)
    return [p for p in presets if kind is None or p.kind == kind]


def load_preset(name: str, kind: Optional[str] = None) -> Preset:
    """`configs/models/NAME.yaml`; the error lists the presets of that kind."""
    path = presets_dir() / f"{name}.yaml"
    preset = _parse(path) if path.is_file() else None
    if preset is None or (kind and preset.kind != kind):
        names = ", ".join(p.name for p in list_presets(kind))
        what = f"is a {preset.kind} preset, not a {kind} one" if preset else "is not a preset"
        raise ConfigError(f"{kind or 'model'}.preset {name!r} {what}; available: {names} (configs/models/)")
    return preset


def _merge(preset_fields: dict, explicit: dict) -> dict:
    merged = {**preset_fields, **explicit}
    for key, value in preset_fields.items():
        if isinstance(value, dict) and isinstance(explicit.get(key), dict):
            merged[key] = {**value, **explicit[key]}
    return merged


def clear_preset_fields(data: dict, section: str, name: str) -> dict:
    """For `--set vlm.preset=NAME`: the preset replaces the fields the config file set that it defines
    (a file's `vlm.model` must not silently win over a preset chosen on the command line)."""
    kind = next(k for k, s in SECTION.items() if s == section)
    defined = load_preset(str(name), kind).fields if name else {}
    current = data.get(section) if isinstance(data.get(section), dict) else {}
    return {**data, section: {k: v for k, v in current.items() if k not in defined}}


def apply_presets(data: dict) -> dict:
    """Expand `vlm.preset` / `clip.preset` of raw config data; explicit fields win."""
    data = dict(data)
    for kind, section in SECTION.items():
        explicit = data.get(section)
        if not isinstance(explicit, dict) or not explicit.get("preset"):
            continue
        preset = load_preset(str(explicit["preset"]), kind)
        data[section] = _merge(preset.fields, explicit)
        for other, values in preset.sections.items():
            if other != section:
                current = data.get(other) if isinstance(data.get(other), dict) else {}
                data[other] = {**values, **current}
    return data


def _hub_cached(repo: str, filename: str, revision: Optional[str]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return found if isinstance(found, str) else None


def _vlm_location(preset: Preset, search_dirs: list[str]) -> Optional[str]:
    for root in search_dirs:
        for candidate in (Path(root) / preset.hub_id, Path(root) / preset.hub_id.split("/")[-1]):
            if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
                return f"local {candidate}"
    config = _hub_cached(preset.hub_id, "config.json", preset.fields.get("revision"))
    if config and any(Path(config).parent.glob("*.safetensors")):
        return f"hub cache @ {Path(config).parent.name[:12]}"
    return None


def _clip_location(preset: Preset) -> Optional[str]:
    try:
        import open_clip
    except ImportError:  # .venv-vllm on a CPU machine holds vLLM alone: no CLIP runs there
        return None

    model, tag = preset.fields["model"], preset.fields.get("pretrained")
    repo = ((open_clip.get_pretrained_cfg(model, tag) if tag else {}) or {}).get("hf_hub", "").rstrip("/")
    weights = repo and next((f for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
                             if _hub_cached(repo, f, None)), None)
    tokenizer = ((open_clip.get_model_config(model) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if not weights or (tokenizer and not _hub_cached(tokenizer, "tokenizer_config.json", None)):
        return None
    return f"hub cache {repo}"


def offline_location(preset: Preset, search_dirs: list[str] = ()) -> Optional[str]:
    """Where the preset's weights are on this machine without network (None when they are not)."""
    return _vlm_location(preset, list(search_dirs)) if preset.kind == "vlm" else _clip_location(preset)
