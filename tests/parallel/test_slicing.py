"""Cutting stored weights for a rank keeps them exact: GGUF blocks cut by rows or by whole blocks of inputs,
and FP8 weights with their scale grids, dequantize to the same slice of the whole weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from kilotok.errors import ModelFormatError
from kilotok.loader.tensor import QuantizedTensor
from kilotok.parallel.layout import Span
from kilotok.parallel.slicing import narrow, take_rows
from kilotok.quant.fp8 import quantize_fp8


def _q4_1(rows: int, cols: int) -> QuantizedTensor:
    values = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    data = quantize(values, GGMLQuantizationType.Q4_1)
    return QuantizedTensor(GGMLQuantizationType.Q4_1, data, (rows, cols))


def test_gguf_blocks_cut_by_rows_and_whole_input_blocks_are_exact():
    weight = _q4_1(7, 160)
    whole = weight.dequantize()
    torch.testing.assert_close(narrow(weight, 1, Span(64, 64), "w").dequantize(), whole[:, 64:128], rtol=0, atol=0)
    torch.testing.assert_close(narrow(weight, 0, Span(2, 3), "w").dequantize(), whole[2:5], rtol=0, atol=0)
    both = take_rows(weight, [Span(0, 2), Span(5, 2)], "w").dequantize()
    torch.testing.assert_close(both, torch.cat([whole[:2], whole[5:]]), rtol=0, atol=0)


def test_an_input_cut_inside_a_block_names_the_weight_and_the_block():
    with pytest.raises(ModelFormatError, match="o_proj .*blocks of 32"):
        narrow(_q4_1(4, 96), 1, Span(48, 48), "o_proj")


@pytest.mark.parametrize("scheme", ["tensor", "channel", "block"])
@pytest.mark.parametrize("dim,span", [(0, Span(128, 72)), (1, Span(256, 128))])
def test_fp8_cuts_keep_their_scales(scheme, dim, span):
    weight = quantize_fp8(torch.randn(200, 384, generator=torch.Generator().manual_seed(1)), scheme)
    expected = weight.dequantize().narrow(dim, span.start, span.size)
    torch.testing.assert_close(narrow(weight, dim, span, "w").dequantize(), expected, rtol=0, atol=0)


def test_fp8_cut_inside_a_scale_block_is_refused():
    weight = quantize_fp8(torch.randn(256, 256), "block")
    with pytest.raises(ModelFormatError, match="whole scale blocks of 128"):
        narrow(weight, 0, Span(64, 128), "w")
