"""FP8 products against float64 math on the same quantized operands, and the layers make_linear builds."""

from __future__ import annotations

import pytest
import torch

from kilotok.layers.linear import DenseLinear, make_linear
from kilotok.quant.fp8 import Fp8Linear, fp8_linear, quantize_activations, quantize_fp8

BF16_EPS = 2.0**-8


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


@pytest.mark.parametrize("mode,scheme", [("fp8-tensor", "tensor"), ("fp8-channel", "channel"),
                                         ("fp8-block", "block"), ("fp8", "block")])
def test_make_linear_quantizes_float_weights(mode, scheme):
    weight, _ = operands(64, 256, 1)
    layer = make_linear(weight, None, mode)
    assert isinstance(layer, Fp8Linear) and layer.scheme == scheme
    assert torch.equal(layer.fp8_weight().dequantize(), quantize_fp8(weight, scheme).dequantize())


def test_stored_fp8_weights_are_kept_and_other_weights_run_in_bf16():
    weight, _ = operands(64, 256, 1)
    stored = quantize_fp8(weight, "channel")
    for mode in ("fp8", "fp8-stored", "fp8-channel"):
        layer = make_linear(stored, None, mode)
        assert layer.weight is stored.data and layer.scheme == "channel", mode
    requantized = make_linear(stored, None, "fp8-block")
    assert requantized.scheme == "block"
    assert isinstance(make_linear(weight, None, "fp8-stored"), DenseLinear)
    dense = make_linear(stored, None, "fp32")
    assert torch.equal(dense.weight, stored.dequantize())
