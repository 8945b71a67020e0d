"""Unpacked GGML blocks must rebuild exactly what the gguf package's own dequantizer produces."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from kilotok.errors import ModelFormatError
from kilotok.loader.tensor import QuantizedTensor
from kilotok.quant.gguf_blocks import GROUP_SIZE, unpack_blocks

SHAPE = (6, 4 * GROUP_SIZE)


def quantized_random(qtype: GGMLQuantizationType, seed: int = 0) -> QuantizedTensor:
    rng = np.random.default_rng(seed)
    # Rows of different magnitudes and a constant row: scales of many sizes, and a zero-range group.
    values = rng.standard_normal(SHAPE).astype(np.float32) * np.logspace(-3, 1, SHAPE[0])[:, None]
    values[-1] = 0.25
    return QuantizedTensor(qtype, quantize(values.astype(np.float32), qtype), SHAPE)


@pytest.mark.parametrize(
    "qtype", [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0]
)
def test_unpacked_blocks_rebuild_gguf_dequantize_exactly(qtype: GGMLQuantizationType) -> None:
    tensor = quantized_random(qtype)
    expected = dequantize(tensor.data, qtype).reshape(SHAPE)

    unpacked = unpack_blocks(tensor)

    assert unpacked.codes.shape == SHAPE
    assert unpacked.scales.shape == unpacked.offsets.shape == (SHAPE[0], SHAPE[1] // GROUP_SIZE)
    np.testing.assert_array_equal(unpacked.dequantize(), expected)


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1])
def test_q4_codes_are_unsigned_nibbles_over_the_full_range(qtype: GGMLQuantizationType) -> None:
    codes = unpack_blocks(quantized_random(qtype)).codes

    assert codes.dtype == np.uint8
    assert codes.min() == 0 and codes.max() == 15


def test_q8_0_codes_are_signed_bytes() -> None:
    codes = unpack_blocks(quantized_random(GGMLQuantizationType.Q8_0)).codes

    assert codes.dtype == np.int8
    assert codes.min() < 0 < codes.max()


def test_unsupported_type_is_a_clear_error() -> None:
    tensor = QuantizedTensor(GGMLQuantizationType.Q6_K, np.zeros((2, 210), np.uint8), (2, 256))

    with pytest.raises(ModelFormatError, match="Q6_K"):
        unpack_blocks(tensor)


def test_truncated_data_is_a_clear_error() -> None:
    tensor = quantized_random(GGMLQuantizationType.Q4_1)
    truncated = QuantizedTensor(tensor.qtype, tensor.data[:, :-1], tensor.shape)

    with pytest.raises(ModelFormatError, match="truncated"):
        unpack_blocks(truncated)
