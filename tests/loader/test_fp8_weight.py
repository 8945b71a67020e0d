"""Stored FP8 weights with their block scales: fusing projections keeps every value, and scales that do not
fit their weight are refused with the shapes named."""

from __future__ import annotations

import pytest
import torch

from kilotok.errors import ModelFormatError
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.quant.fp8 import quantize_fp8
from tests.quant.weights import spread_weight


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


def test_misshapen_scales_are_rejected():
    data = torch.zeros(256, 256, dtype=torch.float8_e4m3fn)
    with pytest.raises(ModelFormatError, match=r"\(3, 2\).*256, 256.*128x128.*\(2, 2\)"):
        Fp8Weight(data, torch.ones(3, 2), (128, 128))
