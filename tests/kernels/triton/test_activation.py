"""The SwiGLU kernel against the reference, and the reference against the definition silu(g) = g sigmoid(g)."""

from __future__ import annotations

import pytest
import torch

from kilotok.errors import InvalidRequestError
from kilotok.kernels.activation import swiglu
from kilotok.kernels.backend import KernelBackend
from tests.kernels.triton.tolerances import TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [100, 1536, 1100])
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_swiglu_kernel_matches_the_reference(rows, width, dtype):
    gate_up = (torch.randn(rows, 2 * width, generator=torch.Generator().manual_seed(rows * width)) * 4).to(dtype)
    got = swiglu(gate_up, KernelBackend.TRITON)
    expected = swiglu(gate_up, KernelBackend.TORCH)
    assert got.shape == (rows, width) and got.dtype == dtype
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got, expected, **tolerance)
    gate, up = gate_up.double().chunk(2, dim=-1)
    torch.testing.assert_close(expected.double(), gate * torch.sigmoid(gate) * up, atol=5e-2, rtol=2e-2)


def test_swiglu_rejects_an_odd_width():
    with pytest.raises(InvalidRequestError, match="even"):
        swiglu(torch.randn(2, 7), KernelBackend.TRITON)
