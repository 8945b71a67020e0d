"""The multi-row low-bit CPU ops against the dequantized fp32 product.

The ops quantize each row's activations to int8 in blocks of 32 with scale amax / 127, rounding to
nearest: each activation moves by at most amax / 254. The quantized activations multiply the weights'
code part d * q (Q4: w = d * q + m; Q8: w = d * q); the Q4 offset m multiplies the exact float sum of the
block's activations and adds no error. So |y - x @ w.T| <= sum over blocks b of
(amax_b / 254) * sum_{i in b} |d_b * q_i| for every output, plus float32 rounding of the sums.
"""

from __future__ import annotations

import pytest
import torch

from kilotok.layers.linear import make_linear
from kilotok.quant import lowbit
from kilotok.quant.int4 import Int4Linear
from kilotok.quant.lowbit import LowBitLinear, pack_float, pack_gguf, reference_lowbit_linear, unpack

pytestmark = pytest.mark.skipif(not lowbit.lowbit_available(), reason="needs AVX-512 VNNI and a C++ compiler")

SHAPES = [(48, 64), (37, 70), (200, 96), (16, 32)]
"""(out, in): whole tiles and blocks, and neither (37 rows pad a tile, 70 inputs pad a block)."""


def dequantized(weight: lowbit.PackedWeight) -> torch.Tensor:
    w, offsets = unpack(weight)
    if offsets is not None:
        w = w + offsets[..., None]
    return w.reshape(weight.out_features, -1)[:, : weight.in_features]


def activation_bound(x: torch.Tensor, weight: lowbit.PackedWeight) -> torch.Tensor:
    """[M, N]: the most int8 activation quantization can move each output, plus float32 rounding."""
    code_part = unpack(weight)[0].abs().sum(dim=-1)
    blocks = code_part.shape[1]
    padded = torch.nn.functional.pad(x, (0, blocks * 32 - x.shape[1]))
    amax = padded.view(x.shape[0], blocks, 32).abs().amax(dim=-1)
    rounding = 1e-5 * (x.abs() @ dequantized(weight).abs().T) + 1e-5
    return (amax / 254) @ code_part.T + rounding


def assert_within_bound(x: torch.Tensor, weight: lowbit.PackedWeight) -> None:
    error = (lowbit.lowbit_linear(x, weight) - x @ dequantized(weight).T).abs()
    bound = activation_bound(x, weight)
    assert (error <= bound).all(), float((error - bound).max())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_row_count_is_within_the_activation_bound(bits, shape):
    generator = torch.Generator().manual_seed(sum(shape) + bits)
    weight = pack_float(torch.randn(*shape, generator=generator), bits)
    for rows in [*range(1, 34), 150]:  # 150: more rows than one of the op's row chunks
        assert_within_bound(torch.randn(rows, shape[1], generator=generator) * 3, weight)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_bound_is_tight_enough_to_catch_a_wrong_block_scale(bits):
    weight = pack_float(torch.randn(48, 64), bits)
    broken = lowbit.PackedWeight(bits, weight.codes, weight.scales * 1.25, weight.extra, 48, 64)
    x = torch.randn(8, 64)
    error = (lowbit.lowbit_linear(x, broken) - x @ dequantized(weight).T).abs()
    assert (error > activation_bound(x, weight)).any()


@pytest.mark.parametrize("bits", [4, 8])
def test_a_row_is_the_same_alone_and_anywhere_in_a_batch(bits):
    weight = pack_float(torch.randn(70, 96), bits)
    batch = torch.randn(150, 96)  # more rows than one of the op's row chunks
    together = lowbit.lowbit_linear(batch, weight)
    for row in (0, 7, 8, 18, 70, 149):
        assert torch.equal(lowbit.lowbit_linear(batch[row : row + 1].contiguous(), weight)[0], together[row])


@pytest.mark.parametrize("bits", [4, 8])
def test_the_reference_computes_what_the_op_computes(bits):
    weight = pack_float(torch.randn(37, 70), bits)
    x = torch.randn(5, 70)
    torch.testing.assert_close(lowbit.lowbit_linear(x, weight), reference_lowbit_linear(x, weight),
                               rtol=1e-5, atol=1e-4)


def test_zero_rows_and_zero_blocks_give_exact_zeros():
    weight = pack_float(torch.randn(32, 64), 4)
    x = torch.zeros(3, 64)
    x[1, :32] = 1.0
    out = lowbit.lowbit_linear(x, weight)
    assert torch.equal(out[0], torch.zeros(32)) and torch.equal(out[2], torch.zeros(32))


@pytest.mark.slow
def test_the_default_models_own_q4_1_and_q8_0_blocks_are_kept(default_gguf_path):
    from kilotok.models.registry import load_checkpoint

    weights = load_checkpoint("smollm2-135m", progress=False).weights
    q4 = weights["model.layers.0.mlp.down_proj.weight"]
    head = weights["model.embed_tokens.weight"].take_rows(torch.arange(0, 49152, 97).numpy())
    for stored in (q4, head):
        packed = pack_gguf(stored)
        assert packed.scales.dtype == torch.float16  # GGUF's own float16 scales, kept exactly
        torch.testing.assert_close(dequantized(packed), stored.dequantize(), rtol=0, atol=0)
        for rows in (1, 8, 33):
            assert_within_bound(torch.randn(rows, stored.shape[1]), packed)


def test_make_linear_uses_the_op_and_falls_back_to_aten_without_it(monkeypatch):
    weight = torch.randn(64, 64)
    assert isinstance(make_linear(weight, None, "int4"), LowBitLinear)
    monkeypatch.setattr("kilotok.layers.linear.lowbit_available", lambda: False)
    assert isinstance(make_linear(weight, None, "int4"), Int4Linear)


def test_a_compiled_graph_keeps_the_op():
    layer = LowBitLinear(pack_float(torch.randn(48, 64), 4), bias=torch.randn(48))
    x = torch.randn(3, 64)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("bits", [4, 8])
def test_float16_and_float32_scales_give_the_same_product(bits):
    generator = torch.Generator().manual_seed(bits)
    codes = (torch.randint(0, 16, (37, 70), generator=generator, dtype=torch.uint8) if bits == 4
             else torch.randint(-127, 128, (37, 70), generator=generator).to(torch.int8))
    scales = (torch.rand(37, 3, generator=generator) / 10).half()
    offsets = -(torch.rand(37, 3, generator=generator)).half() if bits == 4 else torch.zeros(37, 3)
    compact = lowbit.pack(codes, scales, offsets)
    assert compact.scales.dtype == torch.float16
    wide = lowbit.PackedWeight(bits, compact.codes, compact.scales.float(),
                               compact.extra.float() if bits == 4 else compact.extra, 37, 70)
    x = torch.randn(20, 70, generator=generator)
    assert torch.equal(lowbit.lowbit_linear(x, compact), lowbit.lowbit_linear(x, wide))
    assert_within_bound(x, compact)
