"""Registry entries for the matrix products of a linear layer: the FP8 (E4M3) GEMM with per-tensor,
per-channel and 128x128 block weight scales (activations quantized per token, or per 128 columns for block
weights, inside the call), and the BF16 GEMM of the same shape, so that one run gives the FP8/BF16 ratio.

The shape is the MLP's fused gate/up projection (hidden -> 2 x intermediate; a shared expert's on the MoE
layers). The BF16 GEMM has no Triton kernel: every backend runs `F.linear` (cuBLAS), so its "kernel" and its
reference are that one op. The FP8 reference is the engine's own PyTorch path (`torch._scaled_mm` with
row-wise scales on a GPU) for per-tensor and per-channel weights; for block weights, whose PyTorch path
widens the weight tile by tile, it dequantizes both operands and multiplies in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kilotok.bench.kernel_registry.base import (
    DTYPE,
    BenchKernel,
    KernelCall,
    ModelShape,
    Workload,
    element_size,
    random,
    triton_entry,
)
from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.fp8_gemm import activation_group, fp8_gemm, quantize_activations
from kilotok.loader.fp8_weight import FP8_DTYPE, block_scheme, expand_scale, scale_grid_shape, scheme_block


def gemm_shape(model: ModelShape) -> tuple[int, int]:
    """(out_features, in_features) of the benched projection."""
    return 2 * model.mlp_intermediate, model.hidden


def _fp8_inputs(scheme: str):
    def inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
        out_features, in_features = gemm_shape(model)
        block = scheme_block((out_features, in_features), scheme)
        data = random(out_features, in_features, device=device, dtype=FP8_DTYPE)
        scale = (torch.rand(scale_grid_shape(data.shape, block), device=device) + 0.5) * in_features**-0.5
        x = random(tokens, in_features, device=device)
        return KernelCall((x, data, scale), {"block": block, "out_dtype": DTYPE})

    return inputs


def _fp8_reference(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
                   out_dtype: torch.dtype) -> torch.Tensor:
    if block_scheme(data.shape, block) != "block":
        return fp8_gemm(x, data, scale, block, out_dtype=out_dtype, backend=KernelBackend.TORCH)
    group = activation_group(data.shape, block)
    codes, x_scale = quantize_activations(x, group)
    x_dequant = codes.float() * x_scale.repeat_interleave(group, dim=-1)[:, : x.shape[-1]]
    weight = data.float() * expand_scale(scale, block, data.shape)
    return F.linear(x_dequant.to(out_dtype), weight.to(out_dtype))


def _fp8_workload(scheme: str):
    def workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
        """x read and y written in `dtype`, the FP8 weight and its fp32 scales read once. (Quantizing x inside
        the call writes and reads its codes too: a producer that fused it would not.)"""
        out_features, in_features = gemm_shape(model)
        grid = scale_grid_shape((out_features, in_features), scheme_block((out_features, in_features), scheme))
        scales = grid[0] * grid[1] * 4
        rows = tokens * (in_features + out_features) * element_size(dtype)
        return Workload(rows + out_features * in_features + scales, 2 * tokens * out_features * in_features)

    return workload


def _bf16_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    out_features, in_features = gemm_shape(model)
    weight = random(out_features, in_features, device=device, scale=in_features**-0.5)
    return KernelCall((random(tokens, in_features, device=device), weight))


def _bf16_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    out_features, in_features = gemm_shape(model)
    element = element_size(dtype)
    return Workload((tokens * (in_features + out_features) + out_features * in_features) * element,
                    2 * tokens * out_features * in_features)


ENTRIES = (
    *(BenchKernel(f"fp8_gemm_{scheme}", _fp8_inputs(scheme), _fp8_reference, triton_entry(fp8_gemm),
                  _fp8_workload(scheme), pdl=True) for scheme in ("tensor", "channel", "block")),
    BenchKernel("bf16_gemm", _bf16_inputs, F.linear, F.linear, _bf16_workload),
)
