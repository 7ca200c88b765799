"""Shared test fixtures: no network, tiny real models built once per session."""

import os
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """A randomly initialised tiny Idefics3 VLM saved like a real SmolVLM."""
    from vlm_aug.lab.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised tiny open_clip CLIP in the `local-dir:` layout."""
    from vlm_aug.lab.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def consumer_python():
    """open_clip_train's environment (webdataset 0.2.86), created by scripts/setup_consumer_env.sh."""
    if os.environ.get("VLM_AUG_CONSUMER_PYTHON"):
        return os.environ["VLM_AUG_CONSUMER_PYTHON"]
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(repo / "scripts/setup_consumer_env.sh")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"scripts/setup_consumer_env.sh failed:\n{done.stdout}\n{done.stderr}"
    return str(repo / ".venv" / "consumer" / "bin" / "python")
