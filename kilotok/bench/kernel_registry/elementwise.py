"""Registry entries for the row-wise kernels: RMSNorm, the residual add fused before it, SwiGLU, RoPE (with
Llama 4's QK L2 norm fused in where the model has it) and the QK L2 norm on its own."""

from __future__ import annotations

import torch

from kilotok.bench.kernel_registry.base import (
    EPS,
    MAX_POSITION,
    BenchKernel,
    KernelCall,
    ModelShape,
    Workload,
    element_size,
    random,
    triton_entry,
)
from kilotok.kernels.activation import swiglu, swiglu_reference
from kilotok.kernels.norm import (
    add_rms_norm,
    add_rms_norm_reference,
    l2_normalize,
    rms_norm,
    rms_norm_reference,
)
from kilotok.kernels.rotary import apply_rope, rope_reference


def _norm_weight(model: ModelShape, device: torch.device) -> torch.Tensor:
    return torch.rand(model.hidden, device=device) + 0.5


def _rms_norm_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    return KernelCall((random(tokens, model.hidden, device=device), _norm_weight(model, device)), {"eps": EPS})


def _add_rms_norm_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    x, residual = (random(tokens, model.hidden, device=device) for _ in range(2))
    return KernelCall((x, residual, _norm_weight(model, device)), {"eps": EPS})


def _swiglu_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    return KernelCall((random(tokens, 2 * model.mlp_intermediate, device=device, scale=3.0),))


def _rope_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    """q and k as views of one fused qkv projection's output, as the attention layer holds them."""
    q_size, kv_size = model.heads * model.head_dim, model.kv_heads * model.head_dim
    qkv = random(tokens, q_size + 2 * kv_size, device=device)
    q, k, _ = qkv.split([q_size, kv_size, kv_size], dim=-1)
    angles = torch.rand(MAX_POSITION, model.head_dim // 2, device=device) * 6.3
    positions = torch.randint(0, MAX_POSITION, (tokens,), device=device)
    return KernelCall(
        (positions, q.view(tokens, model.heads, model.head_dim), k.view(tokens, model.kv_heads, model.head_dim),
         angles.cos(), angles.sin()),
        {"interleaved": model.rope_interleaved, "l2_norm_eps": EPS if model.qk_l2_norm else None},
    )


def _qk_l2_norm_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall | None:
    """Llama 4's layers without RoPE norm q and k on their own: every head of q and k, one row each."""
    if not model.qk_l2_norm:
        return None
    return KernelCall((random(tokens, model.heads + model.kv_heads, model.head_dim, device=device),), {"eps": EPS})


def _qk_l2_norm_reference(x: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm_reference(x, None, eps)


def _rows_workload(tensors_read: int, tensors_written: int, flops_per_element: int, weight: bool):
    def workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
        row_bytes = tokens * model.hidden * element_size(dtype)
        weight_bytes = model.hidden * 4 if weight else 0
        return Workload(bytes=(tensors_read + tensors_written) * row_bytes + weight_bytes,
                        flops=flops_per_element * tokens * model.hidden)

    return workload


def _swiglu_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    width = model.mlp_intermediate
    # silu (exp, add, divide) and the product: about 4 operations per output element.
    return Workload(bytes=3 * tokens * width * element_size(dtype), flops=4 * tokens * width)


def _rope_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    rotated = tokens * (model.heads + model.kv_heads) * model.head_dim
    tables = 2 * tokens * (model.head_dim // 2) * 4 + tokens * 8  # cos and sin rows (fp32), positions (int64)
    flops = 3 * rotated + (3 * rotated if model.qk_l2_norm else 0)
    return Workload(bytes=2 * rotated * element_size(dtype) + tables, flops=flops)


def _qk_l2_norm_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    elements = tokens * (model.heads + model.kv_heads) * model.head_dim
    # Each head read and written once; square, sum and scale: 3 operations per element.
    return Workload(bytes=2 * elements * element_size(dtype), flops=3 * elements)


ENTRIES = (
    BenchKernel("rms_norm", _rms_norm_inputs, rms_norm_reference, triton_entry(rms_norm),
                _rows_workload(tensors_read=1, tensors_written=1, flops_per_element=4, weight=True), pdl=True),
    BenchKernel("add_rms_norm", _add_rms_norm_inputs, add_rms_norm_reference, triton_entry(add_rms_norm),
                _rows_workload(tensors_read=2, tensors_written=2, flops_per_element=5, weight=True), pdl=True),
    BenchKernel("swiglu", _swiglu_inputs, swiglu_reference, triton_entry(swiglu), _swiglu_workload, pdl=True),
    BenchKernel("rope", _rope_inputs, rope_reference, triton_entry(apply_rope), _rope_workload, pdl=True),
    BenchKernel("qk_l2_norm", _qk_l2_norm_inputs, _qk_l2_norm_reference, triton_entry(l2_normalize),
                _qk_l2_norm_workload, pdl=True),
)
