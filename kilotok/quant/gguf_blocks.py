"""Unpack raw GGML Q4_0 / Q4_1 / Q8_0 blocks into integer codes and per-group scales and offsets.

Every supported type is expressed in one affine form, w = scale * code + offset per group of 32 along a row,
so quantized layers can take the file's own codes and scales without re-quantizing. Q4_0's w = d * (q - 8)
becomes scale = d, offset = -8d, which is exact in float32 (d is a float16, q has 4 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from kilotok.errors import ModelFormatError
from kilotok.loader.tensor import QuantizedTensor

GROUP_SIZE = 32
"""Weights per block in Q4_0, Q4_1 and Q8_0, along the input dimension."""

_HEADER_BYTES = {
    GGMLQuantizationType.Q4_0: 2,  # float16 d
    GGMLQuantizationType.Q4_1: 4,  # float16 d, float16 m
    GGMLQuantizationType.Q8_0: 2,  # float16 d
}
_CODE_BYTES = {
    GGMLQuantizationType.Q4_0: GROUP_SIZE // 2,  # two 4-bit codes per byte
    GGMLQuantizationType.Q4_1: GROUP_SIZE // 2,
    GGMLQuantizationType.Q8_0: GROUP_SIZE,  # one int8 code per byte
}
UNPACKABLE_TYPES = frozenset(_HEADER_BYTES)


@dataclass(frozen=True)
class GroupCodes:
    """w[r, g*32 + j] = scales[r, g] * codes[r, g*32 + j] + offsets[r, g].

    codes: (rows, cols) uint8 in 0..15 for Q4_0/Q4_1, int8 for Q8_0.
    scales, offsets: (rows, cols // 32) float32, holding the file's float16 values exactly.
    """

    codes: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray

    def dequantize(self) -> np.ndarray:
        rows, cols = self.codes.shape
        grouped = self.codes.reshape(rows, -1, GROUP_SIZE).astype(np.float32)
        values = self.scales[..., None] * grouped + self.offsets[..., None]
        return values.reshape(rows, cols)


def unpack_blocks(tensor: QuantizedTensor) -> GroupCodes:
    """Split a Q4_0, Q4_1 or Q8_0 weight into codes, scales and offsets (vectorized, no copies per block)."""
    blocks = _block_view(tensor)
    header = _HEADER_BYTES[tensor.qtype]
    scales = _float16_field(blocks, 0)
    payload = blocks[..., header:]
    if tensor.qtype == GGMLQuantizationType.Q8_0:
        codes = np.ascontiguousarray(payload).view(np.int8)
        offsets = np.zeros_like(scales)
    else:
        # A block's byte j holds element j in its low nibble and element j + 16 in its high nibble.
        codes = np.concatenate([payload & np.uint8(0x0F), payload >> np.uint8(4)], axis=-1)
        is_q4_1 = tensor.qtype == GGMLQuantizationType.Q4_1
        offsets = _float16_field(blocks, 2) if is_q4_1 else -8 * scales
    rows, cols = tensor.shape
    return GroupCodes(codes.reshape(rows, cols), scales, offsets)


def _block_view(tensor: QuantizedTensor) -> np.ndarray:
    """The raw bytes as (rows, groups, bytes_per_block), after checking they fit the declared shape."""
    if tensor.qtype not in UNPACKABLE_TYPES:
        names = ", ".join(t.name for t in UNPACKABLE_TYPES)
        raise ModelFormatError(
            f"cannot unpack {tensor.qtype.name} blocks (supported: {names}); dequantize this weight instead"
        )
    rows, cols = tensor.shape
    bytes_per_block = _HEADER_BYTES[tensor.qtype] + _CODE_BYTES[tensor.qtype]
    expected = (rows, cols // GROUP_SIZE * bytes_per_block)
    if cols % GROUP_SIZE or tensor.data.dtype != np.uint8 or tensor.data.shape != expected:
        raise ModelFormatError(
            f"{tensor.qtype.name} weight of shape {tensor.shape} should be uint8 bytes of shape {expected}, "
            f"got {tensor.data.dtype} {tensor.data.shape}: the file is truncated or corrupt"
        )
    return tensor.data.reshape(rows, cols // GROUP_SIZE, bytes_per_block)


def _float16_field(blocks: np.ndarray, byte_offset: int) -> np.ndarray:
    """The float16 stored at byte_offset of every block, widened to float32 (exact)."""
    raw = np.ascontiguousarray(blocks[..., byte_offset : byte_offset + 2])
    return raw.view(np.float16)[..., 0].astype(np.float32)
