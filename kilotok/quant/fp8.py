"""FP8 (E4M3) matrix products with dynamically quantized activations, and the linear layer built on them.

Activations are quantized per token (per 128-wide group under the block scheme) on every device, so the
CPU computes what an FP8 GPU kernel computes. On the CPU, where torch has no fast FP8 product, the weight
stays FP8 in memory and is widened one tile of rows at a time inside the forward. On CUDA, per-tensor and
per-channel weights go through `torch._scaled_mm` with row-wise scales; block weights are dequantized and
multiplied (a fused block kernel can slot in there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kilotok.errors import ModelFormatError
from kilotok.loader.fp8_weight import (
    DEFAULT_BLOCK,
    FP8_DTYPE,
    FP8_MAX,
    Fp8Weight,
    block_scheme,
    expand_scale,
    scale_grid_shape,
    scheme_block,
)

OUTPUT_DTYPES = (torch.bfloat16, torch.float32)
TILE_ELEMENTS = 1 << 18
"""Weights widened per step on the CPU: a 1 MiB fp32 tile stays in the L2 cache."""
SCALED_MM_MULTIPLE = 16


def fp8_matmul(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
               bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """y = quant(x) @ (data * scale).T + bias for one FP8 weight `data` (out, in) and its block `scale`.

    `block` says the scheme (see fp8_weight.py): (out, in) per tensor, (1, in) per channel, else blocks.
    `out_dtype` (bf16 or fp32) is the accumulation and output precision. x has any leading dims.
    """
    if out_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"FP8 products accumulate in bf16 or fp32, not {out_dtype}")
    out_features, in_features = data.shape
    leading = x.shape[:-1]
    flat = x.reshape(-1, in_features)
    scheme = block_scheme(data.shape, block)
    if _scaled_mm_applies(flat, data, scheme, out_dtype):
        out = _scaled_mm(flat, data, scale, block)
    elif scheme == "block":
        out = _block_tiles(flat, data, scale, block, out_dtype)
    else:
        out = _row_scaled_tiles(flat, data, scale, block, out_dtype)
    if bias is not None:
        out = out + bias.to(out_dtype)
    return out.reshape(*leading, out_features)


def fp8_linear(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None,
               out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`fp8_matmul` for an `Fp8Weight` (one expert of a stacked weight: `weight.expert(e)`)."""
    return fp8_matmul(x, weight.data, weight.scale, weight.block, bias, out_dtype)


def quantize_fp8(weight: torch.Tensor, scheme: str, block: tuple[int, int] = DEFAULT_BLOCK,
                 name: str = "weight") -> Fp8Weight:
    """Symmetric E4M3 quantization: each block's max |w| maps to 448, values round to nearest even."""
    if weight.dim() < 2:
        raise ModelFormatError(
            f"cannot quantize {name} of shape {tuple(weight.shape)} to FP8: weights need (out, in) dims"
        )
    block = scheme_block(weight.shape, scheme, block)
    weight = weight.detach().float()
    rows, cols = weight.shape[-2:]
    grid = scale_grid_shape(weight.shape, block)
    # Zero-pad to whole blocks only to take each block's max; the stored weight keeps its own shape.
    padded = torch.nn.functional.pad(weight.abs(), (0, grid[-1] * block[1] - cols, 0, grid[-2] * block[0] - rows))
    blocks = padded.reshape(*grid[:-2], grid[-2], block[0], grid[-1], block[1])
    amax = blocks.amax(dim=(-3, -1))
    # An all-zero block keeps scale 1 so that dividing by it is harmless.
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    scaled = weight / expand_scale(scale, block, weight.shape)
    return Fp8Weight(scaled.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale, block)


def quantize_activations(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token (group = width) or per-group quantization of activations (..., width).

    Returns fp8 values and fp32 scales of shape (..., ceil(width / group)).
    """
    width = x.shape[-1]
    groups = math.ceil(width / group)
    padded = torch.nn.functional.pad(x.float(), (0, groups * group - width))
    grouped = padded.reshape(*x.shape[:-1], groups, group)
    amax = grouped.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    values = (grouped / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return values.reshape(*x.shape[:-1], groups * group)[..., :width], scale.squeeze(-1)


def _tile_rows(in_features: int, block_rows: int) -> int:
    rows = max(1, TILE_ELEMENTS // in_features)
    return max(block_rows, rows - rows % block_rows)


def _row_scaled_tiles(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
                      out_dtype: torch.dtype) -> torch.Tensor:
    """Per-tensor or per-channel: multiply the fp8 values (exact in bf16) and apply both scales after."""
    values, x_scale = quantize_activations(x, data.shape[-1])
    values = values.to(out_dtype)
    tiles = []
    step = _tile_rows(data.shape[-1], 1)
    for start in range(0, data.shape[0], step):
        tiles.append(F.linear(values, data[start:start + step].to(out_dtype)).float())
    return (torch.cat(tiles, dim=-1) * x_scale * _row_scales(scale, block, data.shape[0])).to(out_dtype)


def _block_tiles(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
                 out_dtype: torch.dtype) -> torch.Tensor:
    """Block scales differ along K, so each tile of rows is dequantized before its product."""
    in_features = data.shape[-1]
    values, x_scale = quantize_activations(x, block[1])
    x_dequant = (values.float() * x_scale.repeat_interleave(block[1], dim=-1)[:, :in_features]).to(out_dtype)
    tiles = []
    step = _tile_rows(in_features, block[0])
    for start in range(0, data.shape[0], step):
        rows = slice(start, start + step)
        weight = data[rows].float() * expand_scale(scale, block, data.shape, rows)
        tiles.append(F.linear(x_dequant, weight.to(out_dtype)))
    return torch.cat(tiles, dim=-1)


def _scaled_mm_applies(x: torch.Tensor, data: torch.Tensor, scheme: str, out_dtype: torch.dtype) -> bool:
    # Row-wise scaled products need CUDA, bf16 output and both matrix dims in multiples of 16.
    return (x.is_cuda and scheme != "block" and out_dtype == torch.bfloat16
            and data.shape[0] % SCALED_MM_MULTIPLE == 0 and data.shape[1] % SCALED_MM_MULTIPLE == 0)


def _scaled_mm(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    values, x_scale = quantize_activations(x, data.shape[-1])
    weight_scale = _row_scales(scale, block, data.shape[0]).reshape(1, -1).contiguous()
    return torch._scaled_mm(values, data.t(), scale_a=x_scale.contiguous(), scale_b=weight_scale,
                            out_dtype=torch.bfloat16)


def _row_scales(scale: torch.Tensor, block: tuple[int, int], out_features: int) -> torch.Tensor:
    """One scale per output row, for schemes with a single block column (per tensor, per channel)."""
    return scale[:, 0].repeat_interleave(block[0])[:out_features]


class Fp8Linear(nn.Module):
    """A linear layer over an FP8 weight; products and output in `out_dtype` (bf16 or fp32)."""

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None = None,
                 out_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if weight.data.dim() != 2:
            raise ValueError(f"an FP8 linear layer takes a 2-D weight, got shape {weight.shape}")
        self.out_features, self.in_features = weight.shape
        self.block = weight.block
        self.scheme = weight.scheme
        self.out_dtype = out_dtype
        self.register_buffer("weight", weight.data.contiguous())
        self.register_buffer("weight_scale", weight.scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))

    @property
    def weight_bytes(self) -> int:
        buffers = [self.weight, self.weight_scale] + ([] if self.bias is None else [self.bias])
        return sum(b.numel() * b.element_size() for b in buffers)

    def fp8_weight(self) -> Fp8Weight:
        return Fp8Weight(self.weight, self.weight_scale, self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_matmul(x, self.weight, self.weight_scale, self.block, self.bias, self.out_dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"block={self.block}, out_dtype={self.out_dtype}")
