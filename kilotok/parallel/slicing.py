"""Cutting a loaded weight to a slice of one dimension in its stored format, so what a rank packs or
quantizes afterwards is exactly its part of what one process would have packed.

- float tensors: any slice;
- GGUF blocks (`QuantizedTensor`): any rows; along the input dimension only whole blocks (a block's codes
  share one scale), so a slice must start and end on a block boundary, else a ModelFormatError;
- FP8 (`Fp8Weight`): the scale grid is cut with the data; a slice must start on a scale-block boundary
  (per-tensor and per-channel scales always fit).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES

from kilotok.errors import ModelFormatError
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.loader.tensor import QuantizedTensor, Weight
from kilotok.parallel.layout import Span


def narrow(weight: Weight, dim: int, span: Span, name: str) -> Weight:
    """`weight` cut to `span` along `dim` (negative dims count from the end)."""
    if isinstance(weight, QuantizedTensor):
        return _narrow_blocks(weight, dim % 2, span, name)
    if isinstance(weight, Fp8Weight):
        return _narrow_fp8(weight, dim % weight.data.dim(), span, name)
    return weight.narrow(dim, span.start, span.size)


def take_rows(weight: Weight, spans: list[Span], name: str) -> Weight:
    """The rows (first dimension) of several spans, concatenated in order."""
    parts = [narrow(weight, 0, span, name) for span in spans]
    if isinstance(weight, QuantizedTensor):
        return QuantizedTensor.concat_rows(parts)
    if isinstance(weight, Fp8Weight):
        return Fp8Weight.concat_rows(parts)
    return torch.cat(parts)


def _narrow_blocks(weight: QuantizedTensor, dim: int, span: Span, name: str) -> QuantizedTensor:
    rows, cols = weight.shape
    if dim == 0:
        return QuantizedTensor(weight.qtype, weight.data[span.start:span.stop], (span.size, cols))
    block, block_bytes = GGML_QUANT_SIZES[weight.qtype]
    if span.start % block or span.size % block:
        raise ModelFormatError(
            f"{name} ({weight.qtype.name}, blocks of {block} along its {cols} inputs) cannot be split at input "
            f"{span.start}..{span.stop}: each rank's slice must be whole blocks; choose a tensor_parallel_size "
            f"that leaves a multiple of {block} inputs per rank")
    first, count = span.start // block * block_bytes, span.size // block * block_bytes
    return QuantizedTensor(weight.qtype, np.ascontiguousarray(weight.data[:, first:first + count]),
                           (rows, span.size))


def _narrow_fp8(weight: Fp8Weight, dim: int, span: Span, name: str) -> Fp8Weight:
    matrix_dim = dim - (weight.data.dim() - 2)
    data = weight.data.narrow(dim, span.start, span.size)
    if matrix_dim < 0:  # a leading (expert) dimension: one scale grid per matrix
        return Fp8Weight(data, weight.scale.narrow(dim, span.start, span.size), weight.block)
    block = list(weight.block)
    full = weight.data.shape[dim]
    if block[matrix_dim] >= full:  # one scale along this dimension: it covers the slice too
        block[matrix_dim] = span.size
        return Fp8Weight(data, weight.scale, tuple(block))
    step = block[matrix_dim]
    if span.start % step or (span.size % step and span.stop != full):
        raise ModelFormatError(
            f"{name} (FP8 in {weight.block[0]}x{weight.block[1]} blocks) cannot be split at {span.start}.."
            f"{span.stop} of dimension {dim}: slices must be whole scale blocks of {step}")
    grid = -(-span.size // step)
    return Fp8Weight(data, weight.scale.narrow(dim, span.start // step, grid), weight.block)
