"""`device: auto` picks CUDA, then Apple's MPS, then the CPU, with a dtype that suits each."""

import pytest
import torch

from vlm_aug.stages.models import ModelUnavailable, resolve_device, resolve_dtype


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    # the machine's accelerators are what is faked here; the choice under test is vlm_aug's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"
    if cuda:  # an explicit device is taken as given where there is CUDA, and refused by name where there is none
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        assert resolve_device("cuda:1") == "cuda:1"
        # an index past the GPUs this process sees (a Ray actor's are renumbered from 0): torch's
        # "invalid device ordinal" traceback at the load before
        with pytest.raises(ModelUnavailable, match="device 'cuda:2': this process sees 2 GPU"):
            resolve_device("cuda:2")
    else:
        with pytest.raises(ModelUnavailable, match="device 'cuda:1': there is no CUDA device here"):
            resolve_device("cuda:1")


@pytest.mark.parametrize("device, dtype", [("cuda", torch.bfloat16), ("cuda:1", torch.bfloat16),
                                           ("mps", torch.float16), ("cpu", torch.float32)])
def test_auto_dtype_per_device(device, dtype):
    assert resolve_dtype("auto", device) == dtype
    assert resolve_dtype("float32", device) == torch.float32


@pytest.mark.parametrize("capability, auto, explicit", [((7, 5), torch.float16, "refused"),
                                                        ((8, 0), torch.bfloat16, torch.bfloat16)])
def test_bfloat16_only_on_gpus_that_have_it(monkeypatch, capability, auto, explicit):
    """On a T4 or V100 (compute capability under 8.0) `auto` chose bfloat16, which vLLM refuses at start
    and transformers emulates slowly; the GPU is what is faked here, the choice is vlm_aug's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert resolve_dtype("auto", "cuda") == auto
    if explicit == "refused":
        with pytest.raises(ModelUnavailable, match=r"bfloat16 on cuda \(Tesla T4, compute capability 7\.5\).*float16 or auto"):
            resolve_dtype("bfloat16", "cuda")
    else:
        assert resolve_dtype("bfloat16", "cuda") == explicit
    assert resolve_dtype("float16", "cuda") == torch.float16


def test_cuda_stages_in_actors_that_reserve_no_gpu_are_refused():
    """ray.num_gpus_per_actor: 0 with device cuda: Ray sets no CUDA_VISIBLE_DEVICES for an actor without
    GPUs, so every actor loaded its models on GPU 0, unreserved (out of memory on a node of 8 actors)."""
    from vlm_aug.config import RayConfig
    from vlm_aug.executors.ray_cluster import ClusterResourceError, plan_pool
    from vlm_aug.stages.base import Resources

    with pytest.raises(ClusterResourceError, match="ray.num_gpus_per_actor: 0 reserves no GPU: every actor would load"):
        plan_pool(RayConfig(num_gpus_per_actor=0), True, Resources.for_device("cuda"))


@pytest.mark.ray
@pytest.mark.slow
def test_the_gpu_smoke_script_runs_its_checks(tmp_path):
    """scripts/smoke_gpu.py, for the day a GPU is there, runs here on the CPU with the same checks
    (every shard done, every record on the device asked for, samples kept), local and under Ray; and
    asked for CUDA where there is none, it says so and fails."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "smoke_gpu.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--samples", "4", "--no-vllm",
                           "--out", str(tmp_path / "smoke")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("8 samples, 8 kept, generation.device ['cpu']") == 2  # local and Ray
    assert "every check held on cpu" in done.stdout
    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "cuda")], capture_output=True,
                              text=True, env=env, timeout=300)
        assert done.returncode == 1 and "--device cuda, but torch" in done.stderr and "sees no CUDA device" in done.stderr


def test_tensor_parallel_degree_and_the_gpus_an_actor_reserves_agree():
    """vlm.vllm.tensor_parallel_size 2 with ray.num_gpus_per_actor 1 started vLLM in an actor that sees one
    GPU ("World size (2) is larger than the number of available GPUs (1)"), after the pool was placed;
    with vlm.engine auto the driver (resolving hf on a head node without a GPU) reserved 1 GPU, not 2."""
    from vlm_aug.config import GenerationConfig, LimitsConfig, RayConfig, VLMConfig
    from vlm_aug.executors.ray_cluster import ClusterResourceError, plan_pool
    from vlm_aug.stages.rewrite import RewriteStage

    for engine in ("vllm", "auto"):
        vlm = VLMConfig(model="vlm_aug:scene_vlm", engine=engine, device="cuda", vllm={"tensor_parallel_size": 2})
        declared = RewriteStage(vlm, GenerationConfig(), LimitsConfig()).resources
        assert declared.gpus == 2 and declared.needs_gpu
        with pytest.raises(ClusterResourceError, match="tensor_parallel_size 2 needs 2 GPUs in each actor"):
            plan_pool(RayConfig(num_gpus_per_actor=1), True, declared)


def test_vllm_memory_share_fits_the_gpu_share_an_actor_reserves(monkeypatch):
    """ray.num_gpus_per_actor 0.5 puts two actors on a GPU; with vLLM's default gpu_memory_utilization 0.80 (of
    the whole GPU) the first took 80% and the second's vLLM failed at start, after the pool was placed."""
    from vlm_aug.config import GenerationConfig, LimitsConfig, RayConfig, VLMConfig
    from vlm_aug.executors.ray_cluster import ClusterResourceError, plan_pool
    from vlm_aug.stages.base import Resources
    from vlm_aug.stages.rewrite import RewriteStage

    def declared(engine: str, utilization: float) -> Resources:
        vlm = VLMConfig(model="vlm_aug:scene_vlm", engine=engine, device="cuda",
                        vllm={"gpu_memory_utilization": utilization})
        return Resources.of_worker([RewriteStage(vlm, GenerationConfig(), LimitsConfig())])

    assert declared("vllm", 0.8).gpu_memory == 0.8 and declared("hf", 0.8).gpu_memory == 0
    for share, utilization, most in ((0.5, 0.8, "0.45"), (0.5, 0.5, "0.45"), (0.25, 0.3, "0.22")):
        with pytest.raises(ClusterResourceError, match=rf"puts {round(1 / share)} actors on each GPU, and "
                           rf"vlm.vllm.gpu_memory_utilization {utilization:g} .* Fix: set "
                           rf"vlm.vllm.gpu_memory_utilization at most {most} "):
            plan_pool(RayConfig(num_gpus_per_actor=share), True, declared("vllm", utilization))
    from vlm_aug.executors import ray_cluster
    # a node with one GPU, faked (no GPU here); the check is ours
    monkeypatch.setattr(ray_cluster, "alive_nodes", lambda: [{"ip": "192.0.2.1", "cpus": 4.0, "gpus": 1.0}])
    for cfg, d in ((RayConfig(num_gpus_per_actor=0.5), declared("vllm", 0.4)),  # room for both
                   (RayConfig(num_gpus_per_actor=0.4), declared("vllm", 0.45)),  # 2 a GPU (not 2.5): room
                   (RayConfig(num_gpus_per_actor=0.6), declared("vllm", 0.8)),  # 1 a GPU: nothing shared
                   (RayConfig(num_gpus_per_actor=1), declared("vllm", 0.8)),  # a whole GPU each
                   (RayConfig(num_gpus_per_actor=0.5), declared("hf", 0.8))):  # torch takes what it uses
        assert plan_pool(cfg, True, d).num_gpus == cfg.num_gpus_per_actor


def test_the_vllm_engine_refuses_a_gpu_index_it_would_not_use(monkeypatch):
    """vLLM runs on the first visible GPU: `vlm.device: cuda:1` ran on cuda:0 while every record said cuda:1."""
    from vlm_aug.config import GenerationConfig, VLMConfig
    from vlm_aug.stages.engines import vllm as vllm_engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the machine is faked; the check is ours
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(vllm_engine, "vllm_version", lambda: "0.32.0")
    engine = vllm_engine.VLLMEngine(VLMConfig(model="vlm_aug:scene_vlm", engine="vllm", device="cuda:1"),
                                    GenerationConfig())
    with pytest.raises(ModelUnavailable, match="vlm.device 'cuda:1' with vlm.engine: vllm: vLLM runs on the first GPU"):
        engine.setup()
