"""FP8 (E4M3) matrix products with dynamically quantized activations: one entry point, the PyTorch
reference here, the Triton kernel in triton/fp8_gemm.py.

Activations are quantized per token (per 128-wide group under the block scheme, matching the weight's
column blocks) on every device and backend, so the CPU computes what an FP8 GPU kernel computes. On the
CPU, where torch has no fast FP8 product, the reference widens the weight one tile of rows at a time. On
CUDA without Triton, per-tensor and per-channel weights go through `torch._scaled_mm` with row-wise
scales; block weights are dequantized and multiplied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kilotok.kernels.backend import KernelBackend
from kilotok.loader.fp8_weight import FP8_DTYPE, FP8_MAX, Fp8Weight, block_scheme, expand_scale, fp8_scales

OUTPUT_DTYPES = (torch.bfloat16, torch.float32)
TILE_ELEMENTS = 1 << 18
"""Weights widened per step on the CPU: a 1 MiB fp32 tile stays in the L2 cache."""
SCALED_MM_MULTIPLE = 16


def activation_group(shape: tuple[int, ...] | torch.Size, block: tuple[int, int]) -> int:
    """Activations are scaled per token, or per group of the weight's column block under the block scheme."""
    return block[1] if block_scheme(shape, block) == "block" else shape[-1]


def fp8_gemm(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
             bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
             backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False) -> torch.Tensor:
    """y = quant(x) @ (data * scale).T + bias for one FP8 weight `data` (out, in) and its block `scale`.

    `block` says the scheme (see loader/fp8_weight.py): (out, in) per tensor, (1, in) per channel, else
    blocks. `out_dtype` (bf16 or fp32) is the output precision (and the reference's product precision).
    x has any leading dims. `pdl`: the Triton kernels may overlap their launches with the previous kernel's
    tail (kernels/triton/pdl.py).
    """
    if out_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"FP8 products accumulate in bf16 or fp32, not {out_dtype}")
    out_features, in_features = data.shape
    leading = x.shape[:-1]
    flat = x.reshape(-1, in_features)
    if backend == KernelBackend.TRITON:
        from kilotok.kernels.triton import matmul_ops  # Triton is an optional extra: imported on first use

        out = matmul_ops.fp8_gemm(flat, data, scale, list(block), bias, out_dtype, pdl)
        return out.reshape(*leading, out_features)
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
               out_dtype: torch.dtype = torch.bfloat16, backend: KernelBackend = KernelBackend.TORCH,
               pdl: bool = False) -> torch.Tensor:
    """`fp8_gemm` for an `Fp8Weight` (one expert of a stacked weight: `weight.expert(e)`)."""
    return fp8_gemm(x, weight.data, weight.scale, weight.block, bias, out_dtype, backend, pdl)


def quantize_activations(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token (group = width) or per-group quantization of activations (..., width).

    Returns fp8 values and fp32 scales of shape (..., ceil(width / group)).
    """
    width = x.shape[-1]
    groups = math.ceil(width / group)
    padded = F.pad(x.float(), (0, groups * group - width))
    grouped = padded.reshape(*x.shape[:-1], groups, group)
    scale = fp8_scales(grouped.abs().amax(dim=-1, keepdim=True))
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
