"""The one place for VLM-family-specific handling: loading a family's processor with settings
that bound its image tokens, and refusing settings the family's processor would silently ignore.

Everything else (chat template, image placeholders, generation) goes through the same
`AutoProcessor` / `AutoModelForImageTextToText` path for every family.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from vlm_aug.config import ConfigError
from vlm_aug.stages.models import ModelUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    token_bounds: str  # which processor_kwargs bound the image tokens, and the default when unset
    requires: tuple[str, ...] = ()  # python modules the family's processor refuses to start without
    bound_keys: tuple[str, ...] = ()  # processor_kwargs that bound tokens; a warning when none is set
    adapt_kwargs: Optional[Callable[[dict], dict]] = None  # user spelling -> what to pass at load
    after_load: Optional[Callable[[Any, dict], None]] = None  # (processor, user's kwargs): set on the loaded one


QWEN_BOUNDS = ("min_pixels", "max_pixels", "size")


def qwen_pixel_bounds(kwargs: dict) -> dict:
    """Qwen's documented `min_pixels` / `max_pixels` (or `size`) -> {shortest_edge, longest_edge}."""
    size = {k: v for k, v in dict(kwargs.get("size") or {}).items() if k in ("shortest_edge", "longest_edge")}
    if "min_pixels" in kwargs:
        size["shortest_edge"] = kwargs["min_pixels"]
    if "max_pixels" in kwargs:
        size["longest_edge"] = kwargs["max_pixels"]
    return size


def qwen_load_kwargs(kwargs: dict) -> dict:
    """The pixel bounds are not passed at load (`qwen_keep_bounds` sets them after): a hub Qwen2-VL /
    Qwen2.5-VL checkpoint's preprocessor_config.json holds its own `min_pixels` / `max_pixels` (3136 /
    12845056), which the image processor's __init__ lets override a `size` given at load, and transformers 5
    keeps load kwargs with the tokenizer and re-sends them at every call (min/max_pixels deprecated there):
    a preset's 512-token bound became 5,329 tokens for a 2048 px photo (16,384 at most), without a word."""
    return {k: v for k, v in kwargs.items() if k not in QWEN_BOUNDS}


def qwen_keep_bounds(processor, kwargs: dict) -> None:
    import dataclasses

    wanted = qwen_pixel_bounds(kwargs)
    image_processor = getattr(processor, "image_processor", None)
    if not wanted or image_processor is None:
        return
    low, high = wanted.get("shortest_edge"), wanted.get("longest_edge")
    if low is not None and high is not None and low > high:  # (taken without a word: every image at max_pixels)
        raise ConfigError(f"vlm.processor_kwargs: min_pixels {low} is above max_pixels {high}")
    size = image_processor.size
    if dataclasses.is_dataclass(size):
        image_processor.size = dataclasses.replace(size, **wanted)
    else:
        image_processor.size = {**dict(size or {}), **wanted}


FAMILIES = (
    Family("SmolVLM / Idefics3", ("idefics3",),
           "do_image_splitting: false -> one tile of max_image_size (64 tokens at 512 px); "
           "unset, a 2048 px image splits into up to 16 tiles + 1 (1088 tokens)"),
    Family("SmolVLM2", ("smolvlm",),
           "do_image_splitting: false -> one tile (81 tokens at 384 px); unset, up to 17 tiles",
           requires=("num2words",)),
    Family("Qwen2-VL", ("qwen2_vl",),
           "min_pixels / max_pixels -> image tokens = pixels / 28^2 within [min, max]; "
           "unset, max_pixels is 12.8 MP (16,384 tokens per image)",
           bound_keys=("max_pixels", "size"), adapt_kwargs=qwen_load_kwargs, after_load=qwen_keep_bounds),
    Family("Qwen2.5-VL", ("qwen2_5_vl",),
           "min_pixels / max_pixels -> image tokens = pixels / 28^2 within [min, max]; "
           "unset, max_pixels is 12.8 MP (16,384 tokens per image)",
           bound_keys=("max_pixels", "size"), adapt_kwargs=qwen_load_kwargs, after_load=qwen_keep_bounds),
    Family("LLaVA", ("llava",),
           "fixed: every image is resized and centre-cropped to the vision tower's size "
           "(576 tokens for llava-1.5 at 336 px)"),
)
LOAD_OPTIONS = {"use_fast"}  # from_pretrained options, not processor attributes
GENERIC = Family("generic", (), "family not known to vlm_aug: check the processor's own settings")


def model_type(path: str | Path) -> str:
    """The `model_type` of a checkpoint directory's config.json ('' when it has none)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return ""
    return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))


def family_of(model_type_name: str) -> Family:
    for family in FAMILIES:
        if model_type_name in family.model_types:
            return family
    return GENERIC


def _require_modules(family: Family, model: str) -> None:
    import importlib.util

    missing = [m for m in family.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelUnavailable(
            f"{family.name} model {model!r} needs the python package(s) {', '.join(missing)} for its "
            f"processor: pip install {' '.join(missing)}")


def accepted_processor_kwargs(processor) -> set[str]:
    """Names the loaded processor and its image processor actually use."""
    names = set(inspect.signature(type(processor).__init__).parameters) - {"self", "args", "kwargs"}
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        valid = getattr(image_processor, "valid_kwargs", None)
        names |= set(getattr(valid, "__annotations__", {}))
        names |= set(image_processor.to_dict())
    return (names | LOAD_OPTIONS) - {"image_processor", "tokenizer", "video_processor"}


def check_processor_kwargs(processor, kwargs: dict[str, Any], model: str, key: str = "vlm.processor_kwargs") -> None:
    """Unknown keys are dropped silently by `from_pretrained` (and by vLLM); here they are an error."""
    unknown = sorted(set(kwargs) - accepted_processor_kwargs(processor))
    if unknown:
        allowed = ", ".join(sorted(accepted_processor_kwargs(processor)))
        raise ConfigError(
            f"{key} {unknown} are not used by {type(processor).__name__} of {model!r} and "
            f"would be ignored; check the spelling. Accepted: {allowed}")


def load_processor(path: str, model: str, processor_kwargs: dict[str, Any], **load_kwargs):
    """`AutoProcessor` for a VLM checkpoint with the family's checks; left padding for batched generate."""
    from transformers import AutoProcessor

    family = family_of(model_type(path))
    _require_modules(family, model)
    adapted = family.adapt_kwargs(processor_kwargs) if family.adapt_kwargs else processor_kwargs
    try:
        processor = AutoProcessor.from_pretrained(path, **load_kwargs, **copy.deepcopy(adapted))
    except (ValueError, OSError) as exc:  # no processor, tokenizer or image processor files in the checkpoint
        raise ModelUnavailable(f"{model!r}: transformers cannot load its processor from {path} ({exc})") from None
    check_processor_kwargs(processor, processor_kwargs, model)
    if family.after_load:
        family.after_load(processor, processor_kwargs)
    if family.bound_keys and not set(family.bound_keys) & set(processor_kwargs):
        log.warning("%s model %r loaded without vlm.processor_kwargs.%s: %s. Use a preset "
                    "(configs/models/) or set it.", family.name, model, family.bound_keys[0], family.token_bounds)
    processor.tokenizer.padding_side = "left"
    return processor
