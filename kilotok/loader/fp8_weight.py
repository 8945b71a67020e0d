"""FP8 (E4M3) weights as checkpoints store them, with their scales: one type for per-tensor,
per-output-channel and block scaling.

Every scheme is a grid of blocks over the last two dims (out_features, in_features) with one fp32 scale per
block, and w = fp8_value * scale (the multiplier that DeepSeek-style checkpoints call `weight_scale_inv`):

- tensor:  one block of (out, in), scale shape (..., 1, 1);
- channel: blocks of (1, in), scale shape (..., out, 1);
- block:   blocks of (rows, cols), usually 128x128, scale shape (..., ceil(out/rows), ceil(in/cols)).

A dimension that is not a multiple of the block size gets a partial block at its end (the scale grid rounds
up), as DeepSeek-format checkpoints and vLLM lay it out, so no layer ever needs padding or a fallback.
Leading dims (experts) are allowed; each matrix has its own grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kilotok.errors import ModelFormatError

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
SCHEMES = ("tensor", "channel", "block")
DEFAULT_BLOCK = (128, 128)


@dataclass
class Fp8Weight:
    """An FP8 weight (..., out_features, in_features) in linear-layer orientation, with its block scales."""

    data: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int]

    def __post_init__(self) -> None:
        if self.data.dtype != FP8_DTYPE:
            raise ModelFormatError(f"FP8 weight data must be {FP8_DTYPE}, got {self.data.dtype}")
        self.block = (int(self.block[0]), int(self.block[1]))
        expected = scale_grid_shape(self.data.shape, self.block)
        if tuple(self.scale.shape) != expected:
            raise ModelFormatError(
                f"FP8 scales of shape {tuple(self.scale.shape)} do not fit a {tuple(self.data.shape)} weight "
                f"in {self.block[0]}x{self.block[1]} blocks; expected {expected}"
            )
        self.scale = self.scale.float()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def scheme(self) -> str:
        return block_scheme(self.data.shape, self.block)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale = expand_scale(self.scale, self.block, self.data.shape)
        return (self.data.float() * scale).to(dtype)

    def with_block(self, block: tuple[int, int]) -> Fp8Weight:
        """The same weight with its scales repeated onto a finer grid (each new block inside an old one)."""
        rows, cols = block
        if self.block[0] % rows or self.block[1] % cols:
            raise ValueError(f"block {block} does not divide {self.block}")
        grid = scale_grid_shape(self.data.shape, block)
        scale = self.scale.repeat_interleave(self.block[0] // rows, dim=-2)[..., : grid[-2], :]
        scale = scale.repeat_interleave(self.block[1] // cols, dim=-1)[..., : grid[-1]]
        return Fp8Weight(self.data, scale.contiguous(), block)

    def expert(self, index: int) -> Fp8Weight:
        """One matrix of a stacked (experts, out, in) weight."""
        return Fp8Weight(self.data[index], self.scale[index], self.block)

    @staticmethod
    def concat_rows(parts: list[Fp8Weight]) -> Fp8Weight:
        """Stack weights along out_features (fused q/k/v, gate/up) without requantizing anything.

        Parts that share a block shape and end on block boundaries concatenate their grids as they are.
        Otherwise every part moves to one scale per row and per common column block (per-tensor parts with
        different scales become one scale per row): a finer grid, the same fp8 values, exact.
        """
        in_features = {p.shape[-1] for p in parts}
        if len(in_features) != 1:
            raise ValueError(f"cannot fuse FP8 weights of widths {sorted(in_features)}")
        if len(parts) == 1:
            return parts[0]
        if all(p.scheme == "tensor" for p in parts) and len({p.scale.item() for p in parts}) == 1:
            data = torch.cat([p.data for p in parts], dim=-2)
            return Fp8Weight(data, parts[0].scale, tuple(data.shape[-2:]))
        blocks = {p.block for p in parts}
        aligned = all(p.shape[-2] % p.block[0] == 0 for p in parts[:-1])
        if len(blocks) != 1 or not aligned:
            cols = math.gcd(*(p.block[1] for p in parts))
            parts = [p.with_block((1, cols)) for p in parts]
        data = torch.cat([p.data for p in parts], dim=-2)
        return Fp8Weight(data, torch.cat([p.scale for p in parts], dim=-2), parts[0].block)


def fp8_scales(amax: torch.Tensor) -> torch.Tensor:
    """The scale that maps a block's max |value| to 448; an all-zero block keeps scale 1 so that dividing by
    it is harmless. Weights and activations share it."""
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))


def scheme_block(shape: tuple[int, ...] | torch.Size, scheme: str,
                 block: tuple[int, int] = DEFAULT_BLOCK) -> tuple[int, int]:
    """The block shape a scheme uses for a weight of `shape`."""
    rows, cols = shape[-2:]
    if scheme == "tensor":
        return (rows, cols)
    if scheme == "channel":
        return (1, cols)
    if scheme == "block":
        return block
    raise ValueError(f"unknown FP8 scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def block_scheme(shape: tuple[int, ...] | torch.Size, block: tuple[int, int]) -> str:
    """Which scheme a block shape amounts to for a weight of `shape`."""
    rows, cols = shape[-2:]
    if tuple(block) == (rows, cols):
        return "tensor"
    return "channel" if tuple(block) == (1, cols) else "block"


def expand_scale(scale: torch.Tensor, block: tuple[int, int], shape: tuple[int, ...] | torch.Size,
                 rows: slice = slice(None)) -> torch.Tensor:
    """The scale of every weight element in `rows` (of the out_features dim), shape (..., n_rows, in)."""
    out_features, in_features = shape[-2:]
    row_index = torch.arange(out_features, device=scale.device)[rows] // block[0]
    col_index = torch.arange(in_features, device=scale.device) // block[1]
    return scale.index_select(-2, row_index).index_select(-1, col_index)


def scale_grid_shape(shape: tuple[int, ...] | torch.Size, block: tuple[int, int]) -> tuple[int, ...]:
    rows, cols = shape[-2:]
    return (*shape[:-2], math.ceil(rows / block[0]), math.ceil(cols / block[1]))
