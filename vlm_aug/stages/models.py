"""Find model weights (built-in, local path or hub cache) and say clearly when they are not there.

Loading itself happens in the stages, always through transformers' Auto classes
and open_clip's factory, for tiny local models and real hub models alike.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from vlm_aug.paths import BUILTIN_PREFIX, resolve_builtin

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name (or a legacy bare name)


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded here; the message says what to do."""


@dataclass(frozen=True)
class Located:
    path: str  # local directory or file to load from
    revision: str  # commit sha (hub cache) or "sha256:<weights hash>"
    source: str  # "builtin" | "local" | "hub"


def resolve_device(device: str) -> str:
    """`auto`: CUDA, else Apple's MPS (a laptop preview), else the CPU."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():  # else a traceback from deep in torch
            raise ModelUnavailable(f"device {device!r}: there is no CUDA device here (torch {torch.__version__}, "
                                   f"CUDA build: {torch.version.cuda or 'no'}): set vlm.device / clip.device to "
                                   "auto or cpu, or run on a machine with a GPU")
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        if device.startswith("cuda") and index >= torch.cuda.device_count():  # torch: "invalid device ordinal"
            raise ModelUnavailable(f"device {device!r}: this process sees {torch.cuda.device_count()} GPU(s), "
                                   "cuda:0 first (a Ray actor sees only the GPUs it reserved, numbered from 0): "
                                   "set vlm.device / clip.device to cuda or a lower index")
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str):
    """`auto`: bfloat16 on CUDA, float16 on MPS (its bfloat16 support depends on the macOS version),
    float32 on the CPU (no fast half precision there)."""
    import torch

    if device.startswith("cuda") and dtype in ("auto", "bfloat16") and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 0):  # T4, V100: no bfloat16 (vLLM refuses it; transformers emulates it, slowly)
            if dtype == "auto":
                return torch.float16
            raise ModelUnavailable(f"dtype bfloat16 on {device} ({torch.cuda.get_device_name(device)}, compute "
                                   f"capability {capability[0]}.{capability[1]}): this GPU has no bfloat16 (8.0 and "
                                   "later do); set vlm.dtype to float16 or auto")
    if dtype == "auto":
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.split(":")[0], torch.float32)
    return getattr(torch, dtype)


# besides the weights, the files of a checkpoint that loading reads and that change what it generates:
# config, generation_config (e.g. a no_repeat_ngram_size there changed every rewrite while the recorded
# revision stayed), tokenizer and processor files, the chat template, remote code
CHECKPOINT_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")


def weights_sha256(path: Path, allow_pickle: bool = False, hash_files: bool = True) -> str:
    """One hash over a local checkpoint: every weights file of a directory (or one file) and the files
    that loading reads beside them (CHECKPOINT_SUFFIXES), each with its name; pickle-only weights refused
    unless allowed. `hash_files=False`: the refusal alone ("" returned; a check before any load)."""
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix == ".safetensors" or p.suffix in PICKLE_SUFFIXES
    )
    pickled = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickled and not allow_pickle and not any(p.suffix == ".safetensors" for p in files):
        raise ModelUnavailable(
            f"{path} holds only pickle-format weights ({', '.join(pickled)}); loading them can run "
            "arbitrary code. Convert them to safetensors, or opt in with vlm.allow_pickle_weights: true"
        )
    if not hash_files:
        return ""
    if path.is_dir():
        files = sorted(files + [p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()])
    digest = hashlib.sha256()
    for file in files:
        if file.suffix in PICKLE_SUFFIXES and not allow_pickle:
            continue
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub (HF_ENDPOINT, at its own port) can be reached now (never when offline, as
    huggingface_hub reads HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def download_command(repo: str, revision: Optional[str] = None) -> str:
    """What fetches `repo` into the cache (huggingface_hub's `hf` CLI; `huggingface-cli` is gone in 1.x)."""
    command = f"hf download {shlex.quote(repo)}"
    return f"{command} --revision {shlex.quote(revision)}" if revision else command


def _unavailable(model: str, what: str, key: str, revision: Optional[str] = None) -> ModelUnavailable:
    local = ("vlm.model: /path/to/model" if key == "vlm.model"
             else "clip.model: /path/to/open_clip_dir, clip.pretrained: null")
    at = f" at revision {revision}" if revision else ""
    return ModelUnavailable(
        f"{what} {model!r}{at} is not in the local Hugging Face cache and the hub cannot be reached "
        "(offline or HF_HUB_OFFLINE=1). Either run once with network access to cache it "
        f"(e.g. `{download_command(model, revision)}`), or point the config at a local directory "
        f"that holds the model ({local})."
    )


def locate_hf(model: str, revision: Optional[str], allow_pickle: bool = False,
              check_only: bool = False) -> Optional[Located]:
    """A transformers model: built-in name, local directory, or hub id (cached or downloadable).
    `check_only`: raise what a load would, without hashing weights or downloading (None when it would download)."""
    if model.startswith(BUILTIN_PREFIX):
        path = Path(resolve_builtin(model))
        return Located(str(path), weights_sha256(path, allow_pickle, not check_only), "builtin")
    if Path(model).expanduser().is_dir():
        path = Path(model).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"model directory {model!r} is not a transformers checkpoint (no config.json): "
                                   "point vlm.model at the folder save_pretrained wrote, or at a hub id")
        return Located(str(path), weights_sha256(path, allow_pickle, not check_only), "local")
    # "Qwen/Qwen2.5-VL-3B-Instruct" has a dot but is a hub id; "ckpt/model.safetensors" is a path
    if not HUB_ID.match(model) or Path(model).suffix in (".safetensors", *PICKLE_SUFFIXES):
        raise ModelUnavailable(f"model path {model!r} does not exist")
    from huggingface_hub import snapshot_download

    patterns = None if allow_pickle else ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py"]
    try:
        path = snapshot_download(model, revision=revision, local_files_only=True, allow_patterns=patterns)
    except Exception:
        if not hub_reachable():
            raise _unavailable(model, "model", "vlm.model", revision) from None
        if check_only:
            return None
        path = snapshot_download(model, revision=revision, allow_patterns=patterns)
    weights_sha256(Path(path), allow_pickle, hash_files=False)  # refuses pickle-only checkpoints
    return Located(path, Path(path).name, "hub")


def locate_clip(model: str, pretrained: Optional[str], check_only: bool = False) -> tuple[str, Optional[str], str]:
    """-> (open_clip model name, pretrained tag, revision). Local dirs use `local-dir:`. `check_only`:
    raise what a load would (unknown model or tag, weights not cached offline), without hashing weights."""
    if model.startswith(BUILTIN_PREFIX) or Path(model).expanduser().is_dir():
        path = Path(resolve_builtin(model)).expanduser().resolve()
        return f"local-dir:{path}", None, weights_sha256(path, hash_files=not check_only)
    if model.startswith("local-dir:"):
        path = Path(model[len("local-dir:"):]).expanduser().resolve()
        if not path.is_dir():
            raise ModelUnavailable(f"CLIP directory {path} does not exist")
        return f"local-dir:{path}", None, weights_sha256(path, hash_files=not check_only)
    import open_clip

    if model not in open_clip.list_models() and not model.startswith("hf-hub:"):
        raise ModelUnavailable(f"unknown open_clip model {model!r}; see open_clip.list_models()")
    _require_cached_tokenizer(model)
    repo = model[len("hf-hub:"):] if model.startswith("hf-hub:") else None
    if repo is None and pretrained:
        cfg = open_clip.get_pretrained_cfg(model, pretrained)
        if not cfg:
            tags = [t for m, t in open_clip.list_pretrained() if m == model]
            raise ModelUnavailable(f"open_clip has no pretrained tag {pretrained!r} for {model}; tags: {tags}")
        hf_hub = cfg.get("hf_hub") or ""
        repo = hf_hub.rstrip("/") or None
        if hf_hub:
            _require_cached_weights(hf_hub)
    elif repo:
        _require_cached_weights(repo + "/")
    return model, pretrained, f"{pretrained or 'random'}@{repo or 'open_clip'}"


def _require_cached_tokenizer(model: str) -> None:
    """SigLIP-style models tokenize with a Hugging Face tokenizer that open_clip downloads on first use."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    text_cfg = (open_clip.get_model_config(model) or {}).get("text_cfg") or {}
    repo = text_cfg.get("hf_tokenizer_name")
    if not repo or isinstance(try_to_load_from_cache(repo, "tokenizer_config.json"), str) or hub_reachable():
        return
    raise ModelUnavailable(
        f"CLIP model {model!r} tokenizes with the Hugging Face tokenizer {repo!r}, which is not in the local "
        "cache, and the hub cannot be reached (offline or HF_HUB_OFFLINE=1). Run once with network access "
        f"(e.g. `{download_command(repo)}`), or choose an open_clip model with the built-in "
        "tokenizer (clip.preset: vit-b-32-laion2b)."
    )


def _require_cached_weights(hf_hub: str) -> None:
    """open_clip's `hf_hub` entry, 'org/repo/' (its default weights file) or 'org/repo/FILE': the weights
    file itself must be cached (a repo whose tokenizer or config alone is cached let open_clip fail
    later with a traceback), in the safetensors form open_clip tries first or the named one."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(hf_hub)
    names = [filename or HF_WEIGHTS_NAME]
    if names[0] == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif names[0].endswith((".bin", ".pth")):
        names.insert(0, names[0].rsplit(".", 1)[0] + ".safetensors")
    if not any(isinstance(try_to_load_from_cache(repo, name), str) for name in names) and not hub_reachable():
        raise _unavailable(repo, "CLIP weights", "clip.model")
