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
        assert resolve_device("cuda:1") == "cuda:1"
    else:
        with pytest.raises(ModelUnavailable, match="device 'cuda:1': there is no CUDA device here"):
            resolve_device("cuda:1")


@pytest.mark.parametrize("device, dtype", [("cuda", torch.bfloat16), ("cuda:1", torch.bfloat16),
                                           ("mps", torch.float16), ("cpu", torch.float32)])
def test_auto_dtype_per_device(device, dtype):
    assert resolve_dtype("auto", device) == dtype
    assert resolve_dtype("float32", device) == torch.float32
