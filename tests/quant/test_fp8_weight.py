"""FP8 quantization against exact E4M3 arithmetic: the grid built from its definition, block maxima by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kilotok.errors import ModelFormatError
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.quant.fp8 import quantize_activations, quantize_fp8


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


def spread_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Rows of very different magnitudes, an outlier column, and an all-zero row."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * torch.logspace(-3, 1, rows)[:, None]
    weight[:, 3] *= 20
    weight[-1] = 0
    return weight


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


def fp8_parts(seed: int, rows: list[int], scheme: str) -> list[Fp8Weight]:
    return [quantize_fp8(spread_weight(r, 576, seed + i), scheme) for i, r in enumerate(rows)]


@pytest.mark.parametrize("scheme,rows", [
    ("block", [576, 192, 192]),   # q/k/v of the default model: q ends mid-block
    ("block", [256, 128]),        # aligned: the grids concatenate as they are
    ("channel", [64, 32]),
    ("tensor", [64, 32]),         # different scales: one scale per row
])
def test_fusing_rows_keeps_every_value(scheme, rows):
    parts = fp8_parts(3, rows, scheme)
    fused = Fp8Weight.concat_rows(parts)
    assert fused.shape == (sum(rows), 576)
    assert torch.equal(fused.data.view(torch.uint8), torch.cat([p.data for p in parts]).view(torch.uint8))
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))


def test_aligned_blocks_and_equal_tensor_scales_stay_in_their_scheme():
    assert Fp8Weight.concat_rows(fp8_parts(0, [256, 128], "block")).block == (128, 128)
    part = quantize_fp8(spread_weight(8, 576), "tensor")
    assert Fp8Weight.concat_rows([part, part]).scheme == "tensor"


def test_misshapen_scales_and_vectors_are_rejected():
    data = torch.zeros(256, 256, dtype=torch.float8_e4m3fn)
    with pytest.raises(ModelFormatError, match=r"\(3, 2\).*256, 256.*128x128.*\(2, 2\)"):
        Fp8Weight(data, torch.ones(3, 2), (128, 128))
    with pytest.raises(ModelFormatError, match="cannot quantize model.norm.weight of shape \\(8,\\)"):
        quantize_fp8(torch.ones(8), "block", name="model.norm.weight")
