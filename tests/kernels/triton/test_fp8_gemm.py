"""The Triton FP8 GEMM and its activation quantizer under the interpreter: codes and scales against the
reference quantizer (and E4M3's grid), products against the float64 product of the dequantized operands."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.fp8_gemm import fp8_gemm, quantize_activations
from kilotok.loader.fp8_weight import FP8_DTYPE
from kilotok.quant.fp8 import quantize_fp8

triton_fp8 = pytest.importorskip("kilotok.kernels.triton.fp8_gemm")

N, K = 200, 300  # neither a multiple of 128 nor of the kernel's tiles


def operands(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(N, K, generator=generator) * torch.logspace(-2, 0.5, N)[:, None]
    # Rows and columns of very different magnitudes, so per-token and per-group scales differ.
    x = torch.randn(rows, K, generator=generator) * torch.logspace(-1, 2, rows)[:, None]
    x[:, 7] *= 30
    return weight, x


def dequantized_product(x: torch.Tensor, weight, x_group: int) -> torch.Tensor:
    """float64 product of the reference-quantized activations and the dequantized weight."""
    codes, scales = quantize_activations(x, x_group)
    x_dequant = codes.double() * scales.double().repeat_interleave(x_group, -1)[:, : x.shape[-1]]
    return x_dequant @ weight.dequantize().double().T


@pytest.mark.parametrize("group", [128, 64, K])
def test_activation_codes_and_scales_equal_the_reference(group):
    _, x = operands(5, seed=group)
    codes, scales = triton_fp8.quantize_activations(x, group)
    expected_codes, expected_scales = quantize_activations(x, group)
    assert codes.dtype == FP8_DTYPE and codes.shape == x.shape
    torch.testing.assert_close(scales, expected_scales, rtol=0, atol=0)
    torch.testing.assert_close(codes.float(), expected_codes.float(), rtol=0, atol=0)


def test_rounding_hits_every_e4m3_value_and_breaks_ties_to_even():
    grid = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    grid = grid[grid.isfinite()].unique()
    below = grid[:-1] + (grid[1:] - grid[:-1]) * 0.25
    ties = (grid[:-1] + grid[1:]) / 2
    x = torch.cat([grid, below, ties, torch.tensor([448.0])])[None]
    # One group whose max is 448 gives scale 1, so the codes are x rounded to E4M3 directly.
    codes, scales = triton_fp8.quantize_activations(x, x.shape[1])
    assert scales.item() == 1.0
    torch.testing.assert_close(codes.float(), x.to(FP8_DTYPE).float(), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ["tensor", "channel", "block"])
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_product_matches_the_dequantized_fp32_product(scheme, rows):
    weight, x = operands(rows, seed=rows)
    quantized = quantize_fp8(weight, scheme)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(9))
    x_group = 128 if scheme == "block" else K

    out = fp8_gemm(x, quantized.data, quantized.scale, quantized.block, bias, torch.float32, KernelBackend.TRITON)

    expected = dequantized_product(x, quantized, x_group) + bias.double()
    magnitude = x.double().abs() @ quantized.dequantize().double().abs().T + bias.double().abs()
    assert out.shape == (rows, N) and out.dtype == torch.float32
    assert ((out.double() - expected).abs() <= 1e-5 * magnitude + 1e-6).all()


@pytest.mark.parametrize("x_group", [128, K])
def test_per_group_activations_with_per_channel_weights(x_group):
    weight, x = operands(3, seed=11)
    quantized = quantize_fp8(weight, "channel")
    out = triton_fp8.fp8_gemm(x, quantized.data, quantized.scale, quantized.block, None, torch.float32, x_group=x_group)
    expected = dequantized_product(x, quantized, x_group)
    assert ((out.double() - expected).abs() <= 1e-5 * expected.abs().max()).all()


def test_bf16_output_and_leading_dims_match_the_torch_backend():
    weight, x = operands(6, seed=5)
    quantized = quantize_fp8(weight, "block")
    x = x.reshape(2, 3, K).bfloat16()
    args = (quantized.data, quantized.scale, quantized.block, None, torch.bfloat16)
    got = fp8_gemm(x, *args, backend=KernelBackend.TRITON)
    expected = fp8_gemm(x, *args, backend=KernelBackend.TORCH)
    assert got.shape == (2, 3, N) and got.dtype == torch.bfloat16
    # Both round to bf16 (the reference also rounds its dequantized operands): a few bf16 ulps apart.
    scale = expected.float().abs().amax(dim=-1, keepdim=True)
    assert ((got.float() - expected.float()).abs() <= 2**-6 * scale).all()

