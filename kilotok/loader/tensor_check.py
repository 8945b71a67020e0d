"""`--check-tensors`: NaN and infinity in any loaded weight, found in one pass over the data before the
model runs, with every damaged tensor named.

What a bit flip can break, by format: in a float weight (F32, F16, BF16 and safetensors floats) an exponent
bit can make the value NaN or infinite; in GGML blocks only the fp16 scales (and mins) can, since the 4-, 5-
and 8-bit codes and the 6-bit sub-block scales of K-quants are finite whatever their bits; in FP8 (E4M3)
weights the values can be NaN (E4M3 has no infinity) and the fp32 scales NaN or infinite. One such number
turns every later activation into NaN, and the output into garbage. A flip that leaves a number finite
changes a weight silently: only a checksum of the file would find that.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from kilotok.errors import ModelFormatError
from kilotok.loader.checkpoint import Checkpoint
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.loader.tensor import QuantizedTensor, Weight

Q = GGMLQuantizationType
HALF_SCALE_OFFSETS = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
}
"""Byte offsets of the fp16 scales and mins inside one block, as ggml lays its blocks out. Other block types
are dequantized and checked whole (slower, and rare in the files kilotok reads)."""
HALF_EXPONENT = 0x7C00
"""fp16 bits that are all set in NaN and infinity, and only there."""
FP8_NAN = 0x7F
"""E4M3 bits (sign aside) of its only non-finite value, NaN."""
CHUNK = 1 << 24
"""Elements checked at a time, so checking a large tensor needs little memory beyond it."""
MAX_NAMED = 5


def check_tensors(checkpoint: Checkpoint) -> None:
    """Raise ModelFormatError naming every weight that holds NaN or infinity (the first few, and how many)."""
    faults = [f"{name}: {fault}" for name, weight in checkpoint.weights.items() if (fault := nonfinite(weight))]
    if faults:
        shown = "; ".join(faults[:MAX_NAMED]) + ("; ..." if len(faults) > MAX_NAMED else "")
        source = checkpoint.path or checkpoint.name
        raise ModelFormatError(
            f"{source}: {len(faults)} {'tensors hold' if len(faults) > 1 else 'tensor holds'} NaN or infinity "
            f"({shown}); "
            f"the {_kind(checkpoint.path)} is damaged: download or convert the model again"
        )


def nonfinite(weight: Weight | Fp8Weight) -> str | None:
    """What in `weight` is NaN or infinite, and where the first one is; None when everything is finite."""
    if isinstance(weight, QuantizedTensor):
        return _block_fault(weight)
    if isinstance(weight, Fp8Weight):
        nan = _scan(weight.data, lambda part: (part.view(torch.uint8) & FP8_NAN) == FP8_NAN)
        return _describe(*nan, weight.shape, "NaN FP8 values") or _float_fault(weight.scale, "scales")
    return _float_fault(weight, "values") if weight.is_floating_point() else None


def _float_fault(tensor: torch.Tensor, what: str) -> str | None:
    return _describe(*_scan(tensor, lambda part: ~torch.isfinite(part)), tuple(tensor.shape),
                     f"NaN or infinite {what}")


def _block_fault(weight: QuantizedTensor) -> str | None:
    offsets = HALF_SCALE_OFFSETS.get(weight.qtype)
    if offsets is None:
        with np.errstate(invalid="ignore", over="ignore"):  # a damaged scale times zero: NaN, found below
            values = weight.dequantize()
        return _float_fault(values, f"{weight.qtype.name} values")
    _, block_bytes = GGML_QUANT_SIZES[weight.qtype]
    blocks = np.asarray(weight.data).reshape(-1, block_bytes)
    bad = np.zeros(len(blocks), dtype=bool)
    for offset in offsets:
        half = blocks[:, offset].astype(np.uint16) | (blocks[:, offset + 1].astype(np.uint16) << 8)
        bad |= (half & HALF_EXPONENT) == HALF_EXPONENT
    first = np.flatnonzero(bad)[:1]
    blocks_per_row = weight.data.shape[1] // block_bytes
    return _describe(int(bad.sum()), int(first[0]) if len(first) else None, (weight.shape[0], blocks_per_row),
                     f"NaN or infinite {weight.qtype.name} block scales", "(row, block)")


def _scan(tensor: torch.Tensor, flag: Callable[[torch.Tensor], torch.Tensor]) -> tuple[int, int | None]:
    """How many elements `flag` marks, and the flat index of the first, a chunk at a time."""
    flat = tensor.reshape(-1)
    count, first = 0, None
    for start in range(0, flat.numel(), CHUNK):
        marked = flag(flat[start:start + CHUNK])
        found = int(marked.sum())
        if found and first is None:
            first = start + int(marked.nonzero()[0, 0])
        count += found
    return count, first


def _describe(count: int, first: int | None, shape: tuple[int, ...], what: str, index: str = "") -> str | None:
    if not count:
        return None
    where = tuple(int(i) for i in np.unravel_index(first, shape)) if shape else ()
    return f"{what}: {count}, the first at {index + ' ' if index else ''}{where}"


def _kind(path: Path | None) -> str:
    return "file" if path is not None and path.is_file() else "checkpoint"
