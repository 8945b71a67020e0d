"""A weight as a GGUF file stores it: raw quantized blocks that can be dequantized or repacked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize


@dataclass
class QuantizedTensor:
    """A 2-D weight in GGML block format, rows in torch order (out_features, in_features).

    `data` holds the raw bytes, one row of blocks per output feature, shape (rows, bytes_per_row).
    Quantized linear layers read the blocks directly (int4 from Q4_0/Q4_1), everything else dequantizes.
    """

    qtype: GGMLQuantizationType
    data: np.ndarray
    shape: tuple[int, int]

    def dequantize(self) -> torch.Tensor:
        values = dequantize(self.data, self.qtype)
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(self.shape)

    def take_rows(self, index: np.ndarray | torch.Tensor) -> QuantizedTensor:
        """Rows in a new order (blocks run along a row, so reordering rows is exact)."""
        rows = np.asarray(index)
        return QuantizedTensor(self.qtype, self.data[rows], (len(rows), self.shape[1]))

    @staticmethod
    def concat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor:
        """Stack weights along the output dimension, as fused QKV and gate/up projections need."""
        qtypes = {p.qtype for p in parts}
        in_features = {p.shape[1] for p in parts}
        if len(qtypes) != 1 or len(in_features) != 1:
            raise ValueError(f"cannot fuse weights of types {qtypes} and widths {in_features}")
        data = np.concatenate([p.data for p in parts], axis=0)
        return QuantizedTensor(parts[0].qtype, data, (data.shape[0], parts[0].shape[1]))


Weight = torch.Tensor | QuantizedTensor


def as_float(weight: Weight | object) -> torch.Tensor:
    """A loaded weight as float32, whatever its stored format (raw GGUF blocks, FP8 with scales, ...):
    every non-tensor weight type has `dequantize()`."""
    return weight.float() if isinstance(weight, torch.Tensor) else weight.dequantize().float()
