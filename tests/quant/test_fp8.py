"""FP8 quantization against exact E4M3 arithmetic (the grid built from its definition, block maxima by hand),
and FP8 products against float64 math on the same quantized operands."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kilotok.errors import ModelFormatError
from kilotok.kernels.fp8_gemm import fp8_linear, quantize_activations
from kilotok.layers.fp8_linear import Fp8Linear
from kilotok.quant.fp8 import quantize_fp8
from tests.quant.weights import spread_weight

BF16_EPS = 2.0**-8


def e4m3_grid() -> np.ndarray:
    """Every finite E4M3 value: 4 exponent bits (bias 7), 3 mantissa bits, subnormals, no infinities,
    and S.1111.111 reserved for NaN, so the largest value is 2^8 * 1.75 = 448."""
    values = [m / 8 * 2.0**-6 for m in range(8)]  # subnormals and zero
    values += [(1 + m / 8) * 2.0 ** (e - 7) for e in range(1, 16) for m in range(8) if (e, m) != (15, 7)]
    positive = np.array(values)
    return np.unique(np.concatenate([-positive, positive]))


GRID = e4m3_grid()


def nearest_distance(x: np.ndarray) -> np.ndarray:
    """Distance from each x to the nearest E4M3 value."""
    index = np.clip(np.searchsorted(GRID, x), 1, len(GRID) - 1)
    return np.minimum(np.abs(GRID[index] - x), np.abs(GRID[index - 1] - x))


def block_maxima(weight: np.ndarray, rows: int, cols: int) -> np.ndarray:
    grid = np.zeros((math.ceil(weight.shape[0] / rows), math.ceil(weight.shape[1] / cols)))
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            grid[i, j] = np.abs(weight[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols]).max()
    return grid


SCHEMES = {"tensor": lambda r, c: (r, c), "channel": lambda r, c: (1, c), "block": lambda r, c: (128, 128)}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", [(200, 320), (256, 384)], ids=["ragged", "whole-blocks"])
def test_codes_are_the_nearest_e4m3_values_of_w_over_scale(scheme, shape):
    weight = spread_weight(*shape)
    rows, cols = SCHEMES[scheme](*shape)

    quantized = quantize_fp8(weight, scheme)

    amax = block_maxima(weight.numpy().astype(np.float64), rows, cols)
    expected_scale = np.where(amax > 0, amax / 448, 1.0)
    scale = quantized.scale.double().numpy()
    np.testing.assert_allclose(scale, expected_scale, rtol=2e-7)
    per_element = np.repeat(np.repeat(scale, rows, 0), cols, 1)[: shape[0], : shape[1]]
    exact = weight.double().numpy() / per_element
    codes = quantized.data.float().double().numpy()
    assert np.isin(codes, GRID).all()
    # Round to nearest: no E4M3 value is closer to w / scale than the stored code (fp32 division slack).
    slack = 1e-6 * np.abs(exact) + 1e-12
    assert (np.abs(codes - exact) <= nearest_distance(exact) + slack).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dequantized_error_is_within_half_an_e4m3_step(scheme):
    weight = spread_weight(130, 260, seed=1)
    quantized = quantize_fp8(weight, scheme)
    rows, cols = quantized.block
    scale = quantized.scale.repeat_interleave(rows, 0)[:130].repeat_interleave(cols, 1)[:, :260]
    # Half a step of 3 mantissa bits is |x| * 2^-4 for normal values, 2^-10 below the smallest normal 2^-6.
    bound = scale * torch.maximum(weight.abs() / scale * 2.0**-4, torch.tensor(2.0**-10)) * (1 + 1e-6)
    assert ((quantized.dequantize() - weight).abs() <= bound).all()


def test_all_zero_weight_round_trips():
    quantized = quantize_fp8(torch.zeros(4, 8), "block")
    assert torch.equal(quantized.dequantize(), torch.zeros(4, 8))


def test_vectors_are_rejected_by_name():
    with pytest.raises(ModelFormatError, match="cannot quantize model.norm.weight of shape \\(8,\\)"):
        quantize_fp8(torch.ones(8), "block", name="model.norm.weight")


@pytest.mark.parametrize("group", [64, 128])
def test_activation_codes_are_nearest_per_group(group):
    x = torch.randn(3, 192, generator=torch.Generator().manual_seed(2)) * torch.tensor([1e-3, 1.0, 50.0])[:, None]
    values, scale = quantize_activations(x, group)
    assert scale.shape == (3, math.ceil(192 / group))
    per_element = scale.repeat_interleave(group, -1)[:, :192].double().numpy()
    xs = x.double().numpy()
    for g in range(scale.shape[1]):
        np.testing.assert_allclose(per_element[:, g * group], np.abs(xs[:, g * group:(g + 1) * group]).max(1) / 448,
                                   rtol=2e-7)
    exact = xs / per_element
    assert (np.abs(values.double().numpy() - exact) <= nearest_distance(exact) + 1e-6 * np.abs(exact)).all()


def operands(rows: int, cols: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * torch.logspace(-2, 0.5, rows)[:, None]
    x = torch.randn(batch, cols, generator=generator) * torch.logspace(-1, 1, batch)[:, None]
    return weight, x


def reference(x: torch.Tensor, weight, group: int) -> torch.Tensor:
    """float64 product of the dequantized operands: what an exact FP8 kernel computes."""
    values, scale = quantize_activations(x, group)
    x_dequant = values.double() * scale.double().repeat_interleave(group, -1)[:, : x.shape[-1]]
    return x_dequant @ weight.dequantize().double().T


@pytest.mark.parametrize("scheme", ["tensor", "channel", "block"])
@pytest.mark.parametrize("batch", [1, 9])
def test_product_matches_float64_on_the_quantized_operands(scheme, batch):
    weight, x = operands(300, 320, batch)
    quantized = quantize_fp8(weight, scheme)
    group = 128 if scheme == "block" else 320
    bias = torch.randn(300)
    expected = reference(x, quantized, group) + bias.double()
    magnitude = (x.double().abs() @ quantized.dequantize().double().abs().T) + bias.double().abs()

    out32 = fp8_linear(x, quantized, bias, out_dtype=torch.float32)
    out16 = fp8_linear(x.bfloat16(), quantized, bias)

    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert ((out32.double() - expected).abs() <= 1e-5 * magnitude + 1e-6).all()
    # bf16 rounds the activation codes' scale product and the output (twice for row-scaled schemes).
    assert ((out16.double() - reference(x.bfloat16(), quantized, group) - bias.double()).abs()
            <= 4 * BF16_EPS * magnitude + 1e-3).all()


def test_quantized_product_is_close_to_the_float_product():
    weight, x = operands(256, 512, 4)
    exact = x @ weight.T
    for scheme in ("tensor", "channel", "block"):
        out = fp8_linear(x, quantize_fp8(weight, scheme), out_dtype=torch.float32)
        # Two E4M3 roundings (weights and activations), each within 2^-4 relative, mostly cancelling.
        assert (out - exact).norm() / exact.norm() < 0.05, scheme


def test_leading_dims_and_layer_attributes():
    weight, x = operands(64, 128, 6)
    layer = Fp8Linear(quantize_fp8(weight, "channel"))
    out = layer(x.reshape(2, 3, 128).bfloat16())
    assert out.shape == (2, 3, 64)
    assert torch.equal(out.reshape(6, 64), layer(x.bfloat16()))
    assert (layer.in_features, layer.out_features, layer.scheme) == (128, 64, "channel")
    assert layer.weight_bytes == 64 * 128 + 64 * 4
