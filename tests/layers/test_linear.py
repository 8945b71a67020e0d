"""make_linear in every weight format against an fp32 matmul with the gguf package's dequantized weight,
int4 and int8 both through kilotok's CPU op and through ATen's kernels (where the op is unavailable);
FP8 formats keep stored FP8 weights or quantize float ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from kilotok.errors import InvalidRequestError
from kilotok.layers.fp8_linear import Fp8Linear
from kilotok.layers.linear import DenseLinear, make_linear
from kilotok.loader.tensor import QuantizedTensor
from kilotok.quant.formats import FORMATS
from kilotok.quant.fp8 import quantize_fp8
from kilotok.quant.int4 import Int4Linear
from kilotok.quant.int8 import Int8Linear
from kilotok.quant.lowbit import LowBitLinear, lowbit_available

OUT_FEATURES, IN_FEATURES = 48, 96

# Relative error of the output norm each mode may show on a Q4_1 weight (whose int4 codes are reused):
# fp32 only reorders sums; fp16 and bf16 round inputs and weights (2^-11 and 2^-8 relative); int8 adds
# rounding of roughly 1/254 of a row's (ATen) or block's (op) max per weight; int4 through ATen only rounds
# its scales to bf16, through the op it rounds activations to int8 per block (about 1/254 of the block's
# max each, so well under 1% of the output).
TOLERANCES = {"fp32": 1e-6, "fp16": 2e-3, "bf16": 1e-2, "int8": 2e-2, "int4": 1e-2}
EXPECTED_TYPES = {
    "aten": {"fp32": DenseLinear, "fp16": DenseLinear, "bf16": DenseLinear, "int8": Int8Linear, "int4": Int4Linear},
    "op": {"fp32": DenseLinear, "fp16": DenseLinear, "bf16": DenseLinear, "int8": LowBitLinear, "int4": LowBitLinear},
}


@pytest.fixture(params=["op", "aten"])
def kernels(request, monkeypatch) -> str:
    """Which low-bit kernels make_linear may use: kilotok's op, or ATen's as on processors without it."""
    if request.param == "op" and not lowbit_available():
        pytest.skip("the low-bit op needs AVX-512 VNNI and a C++ compiler")
    if request.param == "aten":
        monkeypatch.setattr("kilotok.layers.linear.lowbit_available", lambda: False)
    return request.param


def quantized_weight(qtype: GGMLQuantizationType, shape: tuple[int, int]) -> QuantizedTensor:
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return QuantizedTensor(qtype, quantize(values, qtype), shape)


def reference(weight: QuantizedTensor) -> torch.Tensor:
    return torch.from_numpy(dequantize(weight.data, weight.qtype)).reshape(weight.shape)


@pytest.mark.parametrize("mode", list(TOLERANCES))
@pytest.mark.parametrize("as_blocks", [True, False], ids=["gguf", "float"])
def test_every_mode_matches_the_fp32_matmul(mode: str, as_blocks: bool, kernels: str) -> None:
    weight = quantized_weight(GGMLQuantizationType.Q4_1, (OUT_FEATURES, IN_FEATURES))
    dense = reference(weight)
    bias = torch.randn(OUT_FEATURES, generator=torch.Generator().manual_seed(1))
    x = torch.randn(5, IN_FEATURES, generator=torch.Generator().manual_seed(2)).bfloat16()
    expected = x.float() @ dense.T + bias

    layer = make_linear(weight if as_blocks else dense, bias, mode)
    out = layer(x).float()

    assert isinstance(layer, EXPECTED_TYPES[kernels][mode])
    assert (layer.in_features, layer.out_features) == (IN_FEATURES, OUT_FEATURES)
    assert ((out - expected).norm() / expected.norm()).item() < TOLERANCES[mode]


@pytest.mark.parametrize(
    ("mode", "dtype"), [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_float_modes_store_and_compute_in_their_dtype(mode: str, dtype: torch.dtype) -> None:
    layer = make_linear(torch.randn(16, 32), None, mode)

    out = layer(torch.randn(1, 32))

    assert layer.weight.dtype == out.dtype == dtype
    assert not layer.weight.requires_grad


def test_int4_requantizes_other_block_types(kernels: str) -> None:
    weight = quantized_weight(GGMLQuantizationType.Q8_0, (OUT_FEATURES, IN_FEATURES))
    x = torch.randn(3, IN_FEATURES).bfloat16()
    expected = x.float() @ reference(weight).T

    layer = make_linear(weight, None, "int4")

    assert isinstance(layer, EXPECTED_TYPES[kernels]["int4"])
    # 4-bit min/max rounding of Gaussian weights: error about 8% of a weight's spread, averaged down by K.
    assert ((layer(x).float() - expected).norm() / expected.norm()).item() < 0.15


@pytest.mark.parametrize(
    ("mode", "shape", "fallback"),
    [("int4", (24, 64), Int8Linear), ("int4", (16, 40), DenseLinear), ("int8", (16, 40), DenseLinear)],
)
def test_shapes_atens_kernels_cannot_hold_fall_back(mode: str, shape: tuple[int, int], fallback: type,
                                                    monkeypatch) -> None:
    monkeypatch.setattr("kilotok.layers.linear.lowbit_available", lambda: False)
    weight = torch.randn(shape)
    x = torch.randn(2, shape[1])

    layer = make_linear(weight, None, mode)

    assert isinstance(layer, fallback)
    torch.testing.assert_close(layer(x).float(), x @ weight.T, atol=0.1, rtol=0.05)


def test_weight_bytes_per_mode(kernels: str) -> None:
    weight, bias = torch.randn(OUT_FEATURES, IN_FEATURES), torch.randn(OUT_FEATURES)
    weights = OUT_FEATURES * IN_FEATURES
    # Per block of 32, the op keeps a Q4 scale and min as float16 (as GGUF Q4_1 does), or a Q8 float32
    # per-row scale (not exactly a float16) and an int16 code sum; and a float32 bias.
    blocks = weights // 32
    expected = {
        "fp32": 4 * (weights + OUT_FEATURES),
        "fp16": 2 * (weights + OUT_FEATURES),
        "bf16": 2 * (weights + OUT_FEATURES),
        "int8": weights + ((4 + 2) * blocks + 4 * OUT_FEATURES if kernels == "op" else 4 * OUT_FEATURES),
        "int4": weights // 2 + (2 * 2 * blocks + 4 * OUT_FEATURES if kernels == "op" else 2 * 2 * blocks
                                + 2 * OUT_FEATURES),
    }

    for mode, size in expected.items():
        assert make_linear(weight, bias, mode).weight_bytes == size, mode


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequestError, match="int4"):
        make_linear(torch.randn(16, 32), None, "int3")


def test_a_weight_format_and_its_name_build_the_same_layer() -> None:
    weight = torch.randn(16, 32)
    for name in ("bf16", "int8", "fp8-channel"):
        by_name, by_format = make_linear(weight, None, name), make_linear(weight, None, FORMATS[name])
        assert type(by_name) is type(by_format), name
        x = torch.randn(2, 32)
        assert torch.equal(by_name(x), by_format(x)), name


def fp8_test_weight() -> torch.Tensor:
    return torch.randn(64, 256, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mode,scheme", [("fp8-tensor", "tensor"), ("fp8-channel", "channel"),
                                         ("fp8-block", "block"), ("fp8", "block")])
def test_fp8_formats_quantize_float_weights(mode: str, scheme: str) -> None:
    weight = fp8_test_weight()
    layer = make_linear(weight, None, mode)
    assert isinstance(layer, Fp8Linear) and layer.scheme == scheme
    assert torch.equal(layer.fp8_weight().dequantize(), quantize_fp8(weight, scheme).dequantize())


def test_stored_fp8_weights_are_kept_and_other_weights_run_in_bf16() -> None:
    weight = fp8_test_weight()
    stored = quantize_fp8(weight, "channel")
    for mode in ("fp8", "fp8-stored", "fp8-channel"):
        layer = make_linear(stored, None, mode)
        assert layer.weight is stored.data and layer.scheme == "channel", mode
    requantized = make_linear(stored, None, "fp8-block")
    assert requantized.scheme == "block"
    assert isinstance(make_linear(weight, None, "fp8-stored"), DenseLinear)
    dense = make_linear(stored, None, "fp32")
    assert torch.equal(dense.weight, stored.dequantize())
