"""Int4Linear against float matmuls with the gguf package's dequantized weights (the oracle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize

from kilotok.errors import ModelFormatError
from kilotok.loader.tensor import QuantizedTensor
from kilotok.quant.int4 import Int4Linear

# Sources of error against the fp32 oracle: d and m + 8d rounded from float16 to bf16 (under 2^-9 relative
# each, so about 2^-9 of a group's range per weight) and the bf16 output (2^-9 relative). Random, they add
# up to a few 1e-3 of the output norm (measured 2.6e-3); any wrong code, nibble order or zero point gives
# errors of order 1.
RELATIVE_TOLERANCE = 1e-2
BF16_EPS = 2.0**-8


@pytest.fixture(scope="module")
def gguf_weights(default_gguf_path: Path) -> dict[str, QuantizedTensor]:
    """Three Q4_1 projections of the default model's first layer, rows in torch order."""
    wanted = {"blk.0.ffn_down.weight", "blk.0.ffn_gate.weight", "blk.0.attn_k.weight"}
    tensors = {}
    for tensor in GGUFReader(default_gguf_path).tensors:
        if tensor.name in wanted:
            cols, rows = (int(n) for n in tensor.shape)
            raw = np.array(tensor.data).reshape(rows, -1)
            tensors[tensor.name] = QuantizedTensor(tensor.tensor_type, raw, (rows, cols))
    return tensors


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected).norm() / expected.norm()).item()


def gguf_reference(tensor: QuantizedTensor) -> torch.Tensor:
    return torch.from_numpy(dequantize(tensor.data, tensor.qtype)).reshape(tensor.shape)


@pytest.mark.parametrize("name", ["blk.0.ffn_down.weight", "blk.0.ffn_gate.weight", "blk.0.attn_k.weight"])
@pytest.mark.parametrize("batch", [1, 7])
def test_q4_1_from_gguf_matches_dequantized_matmul(
    gguf_weights: dict[str, QuantizedTensor], name: str, batch: int
) -> None:
    tensor = gguf_weights[name]
    assert tensor.qtype == GGMLQuantizationType.Q4_1
    x = torch.randn(batch, tensor.shape[1], generator=torch.Generator().manual_seed(batch)).bfloat16()

    out = Int4Linear.from_gguf(tensor)(x)

    assert out.shape == (batch, tensor.shape[0]) and out.dtype == torch.bfloat16
    assert relative_error(out, x.float() @ gguf_reference(tensor).T) < RELATIVE_TOLERANCE


@pytest.mark.parametrize("batch", [1, 7])
def test_q4_0_from_gguf_matches_dequantized_matmul(
    gguf_weights: dict[str, QuantizedTensor], batch: int
) -> None:
    dense = gguf_reference(gguf_weights["blk.0.ffn_gate.weight"]).numpy()
    q4_0 = GGMLQuantizationType.Q4_0
    tensor = QuantizedTensor(q4_0, quantize(dense, q4_0), dense.shape)
    x = torch.randn(batch, tensor.shape[1], generator=torch.Generator().manual_seed(batch)).bfloat16()

    out = Int4Linear.from_gguf(tensor)(x)

    assert relative_error(out, x.float() @ gguf_reference(tensor).T) < RELATIVE_TOLERANCE


@pytest.mark.parametrize("group_size", [32, 64])
def test_from_float_error_is_within_half_a_step_per_weight(group_size: int) -> None:
    generator = torch.Generator().manual_seed(group_size)
    weight = torch.randn(32, 128, generator=generator) * torch.logspace(-2, 1, 32)[:, None]
    weight[0] = 0.5  # constant groups have a zero range

    layer = Int4Linear.from_float(weight, group_size=group_size)
    # Rows of the identity read the layer's effective weight out one input feature at a time.
    effective = layer(torch.eye(128)).float().T

    groups = weight.reshape(32, -1, group_size)
    low = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - low) / 15
    # Half a step of 4-bit rounding, plus bf16 rounding of scale, zero and output (2^-9 relative each).
    bound = 0.5 * step + BF16_EPS * (groups.abs() + low.abs() + 16 * step)
    assert ((effective.reshape(groups.shape) - groups).abs() <= bound).all()


def test_forward_keeps_leading_dims_and_adds_bias() -> None:
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(16, 64, generator=generator), torch.randn(16, generator=generator)
    x = torch.randn(2, 3, 64, generator=generator)
    without_bias = Int4Linear.from_float(weight)

    out = Int4Linear.from_float(weight, bias)(x)

    assert out.shape == (2, 3, 16)
    torch.testing.assert_close(out.float(), without_bias(x).float() + bias, atol=0.05, rtol=0.01)


@pytest.mark.parametrize(
    ("shape", "group_size"), [((24, 64), 32), ((16, 48), 32), ((16, 64), 16)], ids=["N", "K", "group"]
)
def test_unsupported_shapes_are_clear_errors(shape: tuple[int, int], group_size: int) -> None:
    with pytest.raises(ModelFormatError, match="int4 layers need"):
        Int4Linear.from_float(torch.randn(shape), group_size=group_size)


def test_from_gguf_rejects_other_block_types() -> None:
    data = quantize(np.ones((16, 64), np.float32), GGMLQuantizationType.Q8_0)

    with pytest.raises(ModelFormatError, match="Q8_0"):
        Int4Linear.from_gguf(QuantizedTensor(GGMLQuantizationType.Q8_0, data, (16, 64)))


def test_weight_bytes_counts_half_a_byte_per_weight_and_bf16_scales() -> None:
    layer = Int4Linear.from_float(torch.randn(48, 256))

    assert layer.weight_bytes == 48 * 256 // 2 + (256 // 32) * 48 * 2 * 2
