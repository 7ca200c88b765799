"""Where the project's own files live: shipped configs, prompt templates, model assets."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
BUILTIN_PREFIX = "vlm_aug:"


def configs_dir() -> Path:
    """The `configs/` folder beside the package (vlm_aug installs from a checkout, `pip install -e .`)."""
    candidate = PACKAGE_DIR.parent / "configs"
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(
        "vlm_aug's configs/ folder was not found; install from a checkout with `pip install -e .`"
    )


def resolve_builtin(model: str) -> str:
    """`vlm_aug:scene_vlm` -> absolute path of a model shipped inside the package."""
    if not model.startswith(BUILTIN_PREFIX):
        return model
    path = ASSETS_DIR / model[len(BUILTIN_PREFIX):]
    if not path.is_dir():
        raise FileNotFoundError(
            f"built-in model {model!r} is not in {ASSETS_DIR}; train it with "
            "`python scripts/train_scene_models.py` or reinstall the package"
        )
    return str(path)
