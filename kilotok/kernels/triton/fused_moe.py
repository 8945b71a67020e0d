"""Fused MoE in Triton: the grouped expert GEMMs of a SwiGLU MoE layer over tokens sorted by expert, with
float (bf16, fp32) or FP8 (E4M3, block-scaled) expert weights and the gate weight applied in the epilogue.

An align step (a few tensor ops on the device, no host sync) lays the (token, expert) pairs out by expert,
each expert's run padded to whole blocks of BLOCK_M rows, and names each block's expert. Two launches of one
kernel follow: the first reads each block's token rows and writes silu(gate) * up for its pairs; the second
reads those rows and writes each pair's down projection, scaled by its gate weight (Mixtral, Qwen3-MoE) or
by nothing when the weight went into the input (Llama 4: expert(weight * x), applied to the first product,
which is linear in its input). The k pairs of each token are summed at the end.

FP8 experts quantize each GEMM's input per token (per 128 group for block-scaled weights) with the FP8
GEMM's quantize kernel and scale each K step as that GEMM does.

The expert counts are summed with a scatter-add rather than `torch.bincount`, which on CUDA reads the largest
id back to the host: that would stall the step and break CUDA graph capture. With PDL
(kernels/triton/pdl.py) each launch waits for the kernel before it (the align step's, then the first
product's) and lets the next one launch once its reads are issued.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.kernels.backend import interpreting
from kilotok.kernels.triton.fp8_gemm import fp8_dot_supported, quantize_activations, step_along_k
from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer
from kilotok.loader.fp8_weight import Fp8Weight, block_scheme

BLOCK_M, BLOCK_N, FLOAT_BLOCK_K = 16, 64, 32


@triton.jit
def _expert_gemm_kernel(a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, pair_weight_ptr, out_ptr,
                        sorted_pairs_ptr, block_experts_ptr, num_pairs, N, K, rows_per_a, x_group, w_rows, w_cols,
                        stride_a, stride_as, stride_we, stride_wn, stride_wse, stride_wsn, stride_out,
                        SWIGLU: tl.constexpr, WEIGHT_PRODUCT: tl.constexpr, FP8: tl.constexpr,
                        FP8_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        USE_PDL: tl.constexpr):
    """out[pair, n] for the pairs of one block of sorted slots; with SWIGLU, silu(a @ w[n]) * (a @ w[N + n])."""
    block = tl.program_id(0)
    wait_for_producer(USE_PDL)  # the block's expert, its pairs and their rows are earlier kernels' output
    expert = tl.load(block_experts_ptr + block)
    if expert >= 0:
        slots = block * BLOCK_M + tl.arange(0, BLOCK_M)
        pairs = tl.load(sorted_pairs_ptr + slots)
        pair_ok = pairs < num_pairs
        a_rows = pairs // rows_per_a
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        w_base = w_ptr + expert * stride_we
        ws_base = w_scale_ptr + expert * stride_wse
        gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            a = tl.load(a_ptr + a_rows[:, None] * stride_a + ks[None, :], mask=pair_ok[:, None] & k_ok[None, :],
                        other=0.0)
            b_mask = k_ok[:, None] & col_ok[None, :]
            b = tl.load(w_base + cols[None, :] * stride_wn + ks[:, None], mask=b_mask, other=0.0)
            if FP8:
                if not FP8_DOT:
                    a = a.to(tl.float16)
                    b = b.to(tl.float16)
                a_scale = tl.load(a_scale_ptr + a_rows * stride_as + k0 // x_group, mask=pair_ok, other=0.0)
                b_scale = tl.load(ws_base + (cols // w_rows) * stride_wsn + k0 // w_cols, mask=col_ok, other=0.0)
                gate += tl.dot(a, b, out_dtype=tl.float32) * a_scale[:, None] * b_scale[None, :]
                if SWIGLU:
                    b = tl.load(w_base + (N + cols)[None, :] * stride_wn + ks[:, None], mask=b_mask, other=0.0)
                    if not FP8_DOT:
                        b = b.to(tl.float16)
                    b_scale = tl.load(ws_base + ((N + cols) // w_rows) * stride_wsn + k0 // w_cols, mask=col_ok,
                                      other=0.0)
                    up += tl.dot(a, b, out_dtype=tl.float32) * a_scale[:, None] * b_scale[None, :]
            else:
                a = a.to(DOT_DTYPE)
                gate = tl.dot(a, b.to(DOT_DTYPE), gate, input_precision=PRECISION)
                if SWIGLU:
                    b = tl.load(w_base + (N + cols)[None, :] * stride_wn + ks[:, None], mask=b_mask, other=0.0)
                    up = tl.dot(a, b.to(DOT_DTYPE), up, input_precision=PRECISION)
        release_dependents(USE_PDL)
        if WEIGHT_PRODUCT:
            pair_weight = tl.load(pair_weight_ptr + pairs, mask=pair_ok, other=0.0).to(tl.float32)
            gate = gate * pair_weight[:, None]
            up = up * pair_weight[:, None]
        out = gate
        if SWIGLU:
            out = gate * tl.sigmoid(gate) * up
        tl.store(out_ptr + pairs[:, None] * stride_out + cols[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=pair_ok[:, None] & col_ok[None, :])


def float_dot_dtype(weight_dtype: torch.dtype) -> tl.dtype:
    """The operand dtype of a float expert's dot: the weights' own, except that under the interpreter (whose
    bf16 dot returns garbage in Triton 3.9, checked) they are widened to fp32, which is exact."""
    if interpreting() or weight_dtype == torch.float32:
        return tl.float32
    return tl.bfloat16 if weight_dtype == torch.bfloat16 else tl.float16


def align_by_expert(experts: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ids [T, k] -> (sorted_pairs, block_experts). sorted_pairs [S] holds the flat pair indices
    grouped by expert, each expert's run padded with T * k (no pair) to a multiple of `block_m`;
    block_experts [S / block_m] is each block's expert, -1 past the last run. S is the most any routing can
    need, so the shapes depend only on T, k and the expert count."""
    flat = experts.flatten().long()
    num_pairs = flat.numel()
    # Not bincount: on CUDA it reads the largest id back to the host, which a captured CUDA graph cannot do.
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_ends = padded.cumsum(0)
    order = flat.argsort(stable=True)
    sorted_experts = flat[order]
    rank = torch.arange(num_pairs, device=flat.device) - (counts.cumsum(0) - counts)[sorted_experts]
    slots = (padded_ends - padded)[sorted_experts] + rank
    num_blocks = triton.cdiv(num_pairs + num_experts * (block_m - 1), block_m)
    sorted_pairs = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.int64, device=flat.device)
    sorted_pairs[slots] = order
    block_starts = torch.arange(num_blocks, device=flat.device) * block_m
    block_experts = torch.searchsorted(padded_ends, block_starts, right=True)
    return sorted_pairs, torch.where(block_experts < num_experts, block_experts, -1)


def fused_moe(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor | Fp8Weight,
              down: torch.Tensor | Fp8Weight, gate_on_input: bool, pdl: bool = False) -> torch.Tensor:
    """kernels/moe.py's `moe_experts`: x [T, d], weights / experts [T, k], gate_up [E, 2f, d], down [E, d, f].
    `pdl`: the launches may overlap the previous kernel's tail."""
    tokens, top_k = experts.shape
    num_experts, twice_f, hidden = gate_up.shape
    sorted_pairs, block_experts = align_by_expert(experts, num_experts, BLOCK_M)
    pair_weights = weights.flatten().contiguous()
    dtype = x.dtype if isinstance(gate_up, Fp8Weight) else gate_up.dtype
    inner = torch.empty(tokens * top_k, twice_f // 2, dtype=dtype, device=x.device)
    _expert_gemm(x.contiguous(), top_k, gate_up, pair_weights, inner, sorted_pairs, block_experts, True,
                 gate_on_input, pdl)
    out = torch.empty(tokens * top_k, hidden, dtype=dtype, device=x.device)
    _expert_gemm(inner, 1, down, pair_weights, out, sorted_pairs, block_experts, False, not gate_on_input, pdl)
    return out.view(tokens, top_k, hidden).float().sum(dim=1).to(x.dtype)


def _expert_gemm(a: torch.Tensor, rows_per_a: int, weight: torch.Tensor | Fp8Weight, pair_weights: torch.Tensor,
                 out: torch.Tensor, sorted_pairs: torch.Tensor, block_experts: torch.Tensor, swiglu: bool,
                 weight_product: bool, pdl: bool) -> None:
    n = out.shape[1]
    k = a.shape[1]
    if isinstance(weight, Fp8Weight):
        block = weight.block
        x_group = block[1] if block_scheme(weight.shape, block) == "block" else k
        a, a_scale = quantize_activations(a, x_group, pdl)
        data, scale = weight.data.contiguous(), weight.scale.contiguous()
        fp8 = dict(x_group=x_group, w_rows=block[0], w_cols=block[1], block_k=step_along_k(k, (x_group, block[1])),
                   scale_strides=(scale.stride(0), scale.stride(1)), a_scale_stride=a_scale.stride(0))
    else:
        data, scale, a_scale = weight.contiguous(), a, a
        fp8 = dict(x_group=k, w_rows=1, w_cols=k, block_k=FLOAT_BLOCK_K, scale_strides=(0, 0), a_scale_stride=0)
    grid = (block_experts.numel(), triton.cdiv(n, BLOCK_N))
    use_pdl = pdl_enabled(pdl, a.device)
    _expert_gemm_kernel[grid](
        a, a_scale, data, scale, pair_weights, out, sorted_pairs, block_experts, pair_weights.numel(), n, k,
        rows_per_a, fp8["x_group"], fp8["w_rows"], fp8["w_cols"], a.stride(0), fp8["a_scale_stride"],
        data.stride(0), data.stride(1), *fp8["scale_strides"], out.stride(0),
        SWIGLU=swiglu, WEIGHT_PRODUCT=weight_product, FP8=isinstance(weight, Fp8Weight),
        FP8_DOT=fp8_dot_supported(a.device), DOT_DTYPE=float_dot_dtype(data.dtype),
        PRECISION="ieee" if data.dtype == torch.float32 or interpreting() else "tf32",
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=fp8["block_k"], USE_PDL=use_pdl, **launch_options(use_pdl),
    )
