"""Named, versioned prompt templates and the chat messages built from them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlm_aug.paths import configs_dir

PLACEHOLDER = "{caption}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    text: str

    def __post_init__(self):
        if PLACEHOLDER not in self.text:
            raise ValueError(
                f"prompt template {self.id!r} has no {PLACEHOLDER} placeholder: "
                "the original caption must be part of the prompt"
            )

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)

    def render(self, caption: str) -> str:
        return self.text.replace(PLACEHOLDER, caption)


def load_template(name_or_path: str) -> PromptTemplate:
    """Load `configs/prompts/NAME.yaml`, or a YAML file given by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = configs_dir() / "prompts" / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (configs_dir() / "prompts").glob("*.yaml"))
        raise FileNotFoundError(
            f"prompt template {name_or_path!r} not found (looked at {path}); "
            f"available: {', '.join(available)}"
        )
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "id" not in data or "text" not in data:
        raise ValueError(f"prompt template file {path} must be a mapping with 'id' and 'text'")
    return PromptTemplate(id=str(data["id"]), text=str(data["text"]))


def chat_messages(rendered_prompt: str) -> list[dict]:
    """One user turn: the image, then the rendered prompt (the layout VLM chat templates expect)."""
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": rendered_prompt}],
        }
    ]
