"""`--device`: auto follows torch's view of CUDA; an unknown name or a GPU the machine lacks is refused."""

from __future__ import annotations

import pytest
import torch

from kilotok.errors import InvalidRequestError
from kilotok.kernels.device import resolve_device


@pytest.fixture
def cuda_count(monkeypatch):
    """Pretend torch sees `n` GPUs (only the resolution is tested: nothing is allocated on them)."""
    def pretend(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return pretend


def test_auto_is_cuda_exactly_where_torch_sees_a_gpu(cuda_count):
    cuda_count(0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    cuda_count(2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_cuda_without_a_gpu_is_refused_saying_why(cuda_count):
    cuda_count(0)
    with pytest.raises(InvalidRequestError, match="needs a CUDA GPU, and torch sees none here .* use --device cpu"):
        resolve_device("cuda")
    cuda_count(1)
    with pytest.raises(InvalidRequestError, match="'cuda:1': this machine has 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["tpu", "gpu", "cpu:0", "cuda:x", ""])
def test_unknown_devices_list_the_choices(name):
    with pytest.raises(InvalidRequestError, match="choose one of auto, cpu, cuda") as error:
        resolve_device(name)
    assert error.value.param == "device"
