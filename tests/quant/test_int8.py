"""Int8Linear against float matmuls, within the error bound of symmetric per-channel int8 rounding."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from kilotok.errors import ModelFormatError
from kilotok.loader.tensor import QuantizedTensor
from kilotok.quant.int8 import Int8Linear
from tests.quant.weights import spread_weight

BF16_EPS = 2.0**-8


def step_per_row(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().amax(dim=1, keepdim=True) / 127


def test_effective_weight_is_within_half_a_step() -> None:
    weight = spread_weight(24, 64)

    # Rows of the identity read the layer's effective weight out one input feature at a time.
    effective = Int8Linear.from_float(weight)(torch.eye(64)).float().T

    # Half a step of int8 rounding (step from the bf16 scale, within 2^-9 of max|w|/127) and bf16 output.
    bound = 0.5 * step_per_row(weight) * (1 + BF16_EPS) + BF16_EPS * weight.abs()
    assert ((effective - weight).abs() <= bound).all()


@pytest.mark.parametrize("batch", [1, 7])
def test_matmul_is_within_the_rounding_bound(batch: int) -> None:
    weight = spread_weight(48, 128)
    bias = torch.randn(48, generator=torch.Generator().manual_seed(1))
    x = torch.randn(batch, 128, generator=torch.Generator().manual_seed(batch)).bfloat16()
    expected = x.float() @ weight.T + bias

    out = Int8Linear.from_float(weight, bias)(x)

    assert out.dtype == torch.bfloat16 and out.shape == (batch, 48)
    # Each weight is off by at most half a step; bf16 rounds the matmul output and the bias addition.
    bound = x.float().abs() @ (0.5 * step_per_row(weight) * (1 + BF16_EPS)).expand_as(weight).T
    bound += 2 * BF16_EPS * (expected.abs() + bias.abs()) + 1e-6
    assert ((out.float() - expected).abs() <= bound).all()


def test_from_gguf_q8_0_stays_within_a_step_of_the_file() -> None:
    weight = spread_weight(16, 96).numpy()
    data = quantize(weight, GGMLQuantizationType.Q8_0)
    reference = torch.from_numpy(dequantize(data, GGMLQuantizationType.Q8_0)).reshape(16, 96)

    layer = Int8Linear.from_gguf(QuantizedTensor(GGMLQuantizationType.Q8_0, data, (16, 96)))
    effective = layer(torch.eye(96)).float().T

    bound = 0.5 * step_per_row(reference) * (1 + BF16_EPS) + BF16_EPS * reference.abs()
    assert ((effective - reference).abs() <= bound).all()


def test_forward_keeps_leading_dims_for_any_float_input() -> None:
    layer = Int8Linear.from_float(spread_weight(8, 32))

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = layer(torch.randn(2, 3, 32, dtype=dtype))
        assert out.shape == (2, 3, 8) and out.dtype == torch.bfloat16


def test_in_features_off_the_kernel_grid_is_a_clear_error() -> None:
    # torch's kernel crashes the process on such widths, so the layer must refuse them up front.
    with pytest.raises(ModelFormatError, match="multiple of 16"):
        Int8Linear.from_float(torch.randn(4, 40))


def test_weight_bytes_counts_one_byte_per_weight_and_bf16_scales() -> None:
    layer = Int8Linear.from_float(torch.randn(48, 64), torch.zeros(48))

    assert layer.weight_bytes == 48 * 64 + 48 * 2 + 48 * 2
    assert (layer.in_features, layer.out_features) == (64, 48)


def test_all_zero_weight_gives_zero_output() -> None:
    layer = Int8Linear.from_float(torch.zeros(16, 32))

    out = layer(torch.randn(3, 32))

    assert torch.equal(out, torch.zeros(3, 16, dtype=torch.bfloat16))
