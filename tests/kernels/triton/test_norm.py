"""The RMSNorm kernels (plain, fused with the residual add, weightless) against the PyTorch reference, and
the reference against the formula written out in float64."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.norm import add_rms_norm, l2_normalize, rms_norm
from tests.kernels.triton.tolerances import TOLERANCE

ROWS = (1, 3, 17)
HIDDEN = (100, 576)
EPS = 1e-5


def _inputs(rows: int, hidden: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, hidden, generator=generator) * 3).to(dtype)
    weight = torch.rand(hidden, generator=generator) + 0.5
    return x, weight


def _formula(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    x = x.double()
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
    return normed if weight is None else normed * weight.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_kernel_matches_the_reference(rows, hidden, dtype):
    x, weight = _inputs(rows, hidden, dtype, seed=rows * hidden)
    expected = rms_norm(x, weight, EPS, KernelBackend.TORCH)
    got = rms_norm(x, weight, EPS, KernelBackend.TRITON)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, expected, **TOLERANCE[dtype])
    torch.testing.assert_close(expected.double(), _formula(x, weight), atol=1e-2 if dtype != torch.float32 else 1e-5,
                               rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("rows", ROWS)
def test_fused_add_rms_norm_matches_add_then_norm(rows, hidden, dtype):
    x, weight = _inputs(rows, hidden, dtype, seed=rows + hidden)
    residual = _inputs(rows, hidden, dtype, seed=rows + hidden + 1)[0]
    normed, summed = add_rms_norm(x, residual, weight, EPS, KernelBackend.TRITON)
    expected_normed, expected_summed = add_rms_norm(x, residual, weight, EPS, KernelBackend.TORCH)
    # The residual stream is one rounding of the fp32 sum on both paths (to nearest on the GPU, toward zero
    # under the interpreter: an ulp apart at most in bf16).
    exact = dict(atol=0, rtol=0) if dtype == torch.float32 else dict(atol=0, rtol=2**-7)
    torch.testing.assert_close(summed, expected_summed, **exact)
    torch.testing.assert_close(normed, expected_normed, **TOLERANCE[dtype])
    torch.testing.assert_close(expected_summed, residual + x, atol=0, rtol=0)


def test_norm_of_strided_rows_and_leading_dims():
    """Per-head norms see [T, H, D] views of a fused projection (Qwen3's q/k norm): rows with a stride."""
    fused = torch.randn(3, 5 * 24 + 7)
    heads = fused[:, :120].reshape(3, 5, 24)
    weight = torch.rand(24) + 0.5
    got = rms_norm(heads, weight, EPS, KernelBackend.TRITON)
    torch.testing.assert_close(got, rms_norm(heads, weight, EPS, KernelBackend.TORCH), atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l2_normalize_kernel_has_no_weight(dtype):
    x = (torch.randn(17, 4, 64, generator=torch.Generator().manual_seed(5)) * 2).to(dtype)
    got = l2_normalize(x, EPS, KernelBackend.TRITON)
    torch.testing.assert_close(got, l2_normalize(x, EPS, KernelBackend.TORCH), **TOLERANCE[dtype])
    torch.testing.assert_close(got.double(), _formula(x, None), atol=2e-2, rtol=2e-2)


def test_empty_batch():
    x = torch.empty(0, 576)
    assert rms_norm(x, torch.ones(576), EPS, KernelBackend.TRITON).shape == (0, 576)
