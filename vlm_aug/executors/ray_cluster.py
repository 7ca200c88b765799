"""Connect to Ray (an existing cluster or an embedded local instance) and size the actor pool
from what the cluster really has, failing fast with a clear message when it cannot be met."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

from vlm_aug.config import ConfigError, RayConfig
from vlm_aug.executors import signal_handler
from vlm_aug.stages.base import Resources
from vlm_aug.workers import usable_cpus


class ClusterResourceError(ConfigError):
    """The cluster cannot run the pool that was asked for; the message says what was asked and what exists."""


class RayUnavailable(ConfigError):
    """No Ray cluster answers at the given address."""


@dataclass(frozen=True)
class PoolPlan:
    num_actors: int
    num_cpus: float
    num_gpus: float
    torch_threads: int

    def describe(self) -> str:
        gpus = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return (f"{self.num_actors} actor(s) x ({self.num_cpus:g} CPU{gpus}, "
                f"{self.torch_threads} torch thread(s))")


# An HTTP/2 client's first bytes: the connection preface and an empty SETTINGS frame. Ray's GCS (and
# the Ray Client server of ray:// addresses) are gRPC servers, which answer with a SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_SETTINGS = 0x04
WAY_ON = ("Start one (`ray start --head`), fix --ray-address / RAY_ADDRESS, or leave both unset to run on an "
          "embedded local instance")


def _resolve(address: str) -> str | None:
    """`auto`: the cluster Ray itself would pick (RAY_ADDRESS, else the last `ray start` on this machine,
    which may be gone); None when Ray finds none (it says so itself) or cannot tell."""
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address
        return canonicalize_bootstrap_address("auto")
    except Exception:  # a private helper: when it moves, Ray's own connect speaks for itself
        return None


def _probe(address: str, timeout: float) -> None:
    """Ray waits minutes, retrying, on an address where nothing listens or where another service does (the
    dashboard's 8265, a stale `auto`); this answers in seconds: a TCP connection, then an HTTP/2 greeting
    that a gRPC server (the GCS, the Ray Client server) answers in kind."""
    if address == "local":
        return
    target = _resolve(address)
    if target is None:
        return
    host, _, port = target.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise RayUnavailable(f"ray.address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:10001 or "
                             f"auto. {WAY_ON}")
    said = f"{address!r}" + (f" (auto: {target}, from RAY_ADDRESS or the last `ray start` here)" if address == "auto" else "")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(H2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.timeout:
        head = b""
    except OSError as exc:
        raise RayUnavailable(f"no Ray cluster answers at {said} ({exc}). {WAY_ON}") from None
    if len(head) < 9 or head[3] != H2_SETTINGS:
        raise RayUnavailable(f"{said} answers, but not as Ray: Ray's GCS port (6379 by default) and its Ray Client "
                             f"port (ray://, 10001) speak gRPC; is it another service's port (the dashboard is "
                             f"8265)? {WAY_ON}")


def quiet_token_auth(cfg: RayConfig) -> None:
    """For an embedded instance, say `RAY_AUTH_MODE=token` (Ray's own default for a new local
    instance) explicitly, so Ray does not warn about it on every start. Ray reads the variable
    when it is imported, so only before that; a user's own RAY_AUTH_MODE wins; clusters keep
    whatever their operator configured."""
    embedded = not (cfg.address or os.environ.get("RAY_ADDRESS"))
    if embedded and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def connect(cfg: RayConfig) -> tuple[bool, bool]:
    """Initialise Ray unless it already is. -> (we connected and must shut down, embedded)."""
    import ray

    if ray.is_initialized():
        return False, False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        _probe(address, min(cfg.resource_timeout_s, 5.0))
        ray.init(address=address, log_to_driver=True)
        return True, False
    # address="local": never attach to some other cluster `ray start` left on this machine
    with ctrl_c_held() as held:
        try:
            ray.init(address="local", num_cpus=usable_cpus(), include_dashboard=cfg.dashboard,
                     object_store_memory=cfg.object_store_mb * 1024 * 1024)
        except BaseException:  # a failure part way: the processes it started (raylet, GCS, agents) stop
            ray.shutdown()
            raise
    if held:
        ray.shutdown()
        raise KeyboardInterrupt("Ctrl-C while Ray started")
    return True, True


@contextlib.contextmanager
def ctrl_c_held():
    """Ctrl-C held while the embedded Ray starts (2-8 s) and raised once it has: interrupted part way,
    `ray.init` left its raylet's dashboard and runtime-env agents running, orphaned, where
    `ray.shutdown` could not find them (2 of 3 tries). A second Ctrl-C is raised at once. -> a list that
    holds the signal if one came."""
    held: list[int] = []

    def hold(signum, frame):
        held.append(signum)
        if len(held) > 1:  # a second Ctrl-C: now (ray.init hangs?)
            raise KeyboardInterrupt(f"signal {signum}")

    with signal_handler(hold, signal.SIGINT):
        yield held


def alive_nodes() -> list[dict]:
    import ray

    return [{"ip": n.get("NodeManagerAddress", "?"), "cpus": n["Resources"].get("CPU", 0.0),
             "gpus": n["Resources"].get("GPU", 0.0)} for n in ray.nodes() if n.get("Alive")]


def describe_nodes(nodes: list[dict]) -> str:
    total_cpu, total_gpu = sum(n["cpus"] for n in nodes), sum(n["gpus"] for n in nodes)
    per_node = "; ".join(f"{n['ip']}: {n['cpus']:g} CPU, {n['gpus']:g} GPU" for n in nodes)
    return f"{len(nodes)} node(s), {total_cpu:g} CPU and {total_gpu:g} GPU in all ({per_node})"


def torch_threads_for(cpus: float) -> int:
    """`ray.torch_threads_per_actor` when unset: the actor's CPUs but one, at least 1. One core stays for
    the prefetch thread that reads, decodes and prepares the next batch, as the local executor leaves one:
    on 2 cores, 1 actor of 2 CPUs ran 158.0-159.3 samples/s with 1 torch thread against 136.1-149.6
    with 2 (3 alternating rounds on the bench's scene shards; docs/cluster.md)."""
    return max(1, math.floor(cpus + 1e-9) - 1)


def fit(cfg: RayConfig, nodes: list[dict], declared: Resources) -> tuple[PoolPlan | None, str]:
    """-> (plan, "") when the cluster can hold the pool, else (None, what is wrong). Each actor
    reserves what its stages `declared`, unless the config says otherwise."""
    has_gpus = any(n["gpus"] > 0 for n in nodes)
    gpus = cfg.num_gpus_per_actor
    if gpus is None:
        gpus = declared.gpus if has_gpus or declared.needs_gpu else 0.0
    cpus = cfg.num_cpus_per_actor or declared.cpus

    def fits(node: dict) -> int:
        by_cpu = math.floor(node["cpus"] / cpus + 1e-9)
        return min(by_cpu, math.floor(node["gpus"] / gpus + 1e-9)) if gpus else by_cpu

    capacity = sum(fits(n) for n in nodes)
    wanted = cfg.num_actors or capacity
    threads = cfg.torch_threads_per_actor or torch_threads_for(cpus)
    if capacity >= max(wanted, 1):
        return PoolPlan(wanted, cpus, gpus, threads), ""
    asked = f"{cfg.num_actors or 'at least 1'} actor(s) with {cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
    fixes = []
    if gpus and not has_gpus:
        fixes.append("set ray.num_gpus_per_actor: 0 and vlm.device / clip.device: cpu for a CPU pool, or connect to "
                     "a cluster with GPUs (--ray-address)")
    largest = max((n["cpus"] for n in nodes), default=0.0)
    if cpus > largest:  # (cluster.yaml's 4 on a 2-core machine: the GPU fix alone failed again on the CPUs)
        fixes.append(f"set ray.num_cpus_per_actor at most {largest:g} (the largest node's CPUs)")
    fix = "; and ".join(fixes) or "lower ray.num_cpus_per_actor / ray.num_gpus_per_actor / ray.num_actors, or add nodes"
    return None, (f"the Ray cluster cannot hold the actor pool: asked for {asked} each "
                  f"(room for {capacity}); the cluster has {describe_nodes(nodes)}. Fix: {fix}")


# the most of one GPU's memory the vLLM engines of the actors sharing it may take together: the rest is
# their CUDA contexts' and CLIP's (ViT-B-32 ~0.6 GB, ViT-L-14 ~1.8 GB in fp32)
GPU_SHARED_BY_VLLM = 0.9


def plan_pool(cfg: RayConfig, embedded: bool, declared: Resources) -> PoolPlan:
    """Size the pool; on a cluster that may still be adding nodes, wait up to resource_timeout_s."""
    if declared.needs_gpu and cfg.num_gpus_per_actor == 0:
        # Ray sets no CUDA_VISIBLE_DEVICES for an actor that holds no GPU: each would take GPU 0, unreserved
        raise ClusterResourceError(
            "the stages ask for device cuda, and ray.num_gpus_per_actor: 0 reserves no GPU: every actor would load "
            "its models on GPU 0, unreserved. Fix: set ray.num_gpus_per_actor above 0 (1, or 0.5 for two actors a "
            "GPU), or vlm.device / clip.device: cpu")
    if declared.gpus > 1 and cfg.num_gpus_per_actor is not None and 0 < cfg.num_gpus_per_actor < declared.gpus:
        raise ClusterResourceError(  # vLLM: "World size (2) is larger than the number of available GPUs (1)"
            f"vlm.vllm.tensor_parallel_size {declared.gpus:g} needs {declared.gpus:g} GPUs in each actor, and "
            f"ray.num_gpus_per_actor is {cfg.num_gpus_per_actor:g}. Fix: set ray.num_gpus_per_actor to "
            f"{declared.gpus:g} (or leave it unset), or lower vlm.vllm.tensor_parallel_size")
    share = cfg.num_gpus_per_actor
    per_gpu = math.floor(1 / share + 1e-9) if share else 0  # actors Ray places on one GPU
    if declared.gpu_memory and per_gpu >= 2 and declared.gpu_memory * per_gpu > GPU_SHARED_BY_VLLM + 1e-9:
        # two actors of 0.5 GPU with 0.80 each: the first takes 80% of the GPU, the second's vLLM fails at
        # start; at 0.5 each the first's CUDA context and CLIP leave the second less than its half
        most = math.floor(GPU_SHARED_BY_VLLM / per_gpu * 100) / 100
        raise ClusterResourceError(
            f"ray.num_gpus_per_actor {share:g} puts {per_gpu} actors on each GPU, and vlm.vllm.gpu_memory_utilization "
            f"{declared.gpu_memory:g} is the share of the whole GPU's memory each actor's vLLM takes: "
            f"{per_gpu} x {declared.gpu_memory:g} leaves no room for the others' CUDA contexts and CLIP, so the "
            f"actors after the first would fail at start. Fix: set vlm.vllm.gpu_memory_utilization at most "
            f"{most:g} ({GPU_SHARED_BY_VLLM:g} of the GPU over {per_gpu} actors), or ray.num_gpus_per_actor: 1")
    deadline = time.monotonic() + (0.0 if embedded else cfg.resource_timeout_s)
    while True:
        plan, problem = fit(cfg, alive_nodes(), declared)
        if plan is not None:
            return plan
        if time.monotonic() >= deadline:
            waited = "" if embedded else f" (waited {cfg.resource_timeout_s:g} s for nodes to join)"
            raise ClusterResourceError(problem + waited)
        time.sleep(1.0)
