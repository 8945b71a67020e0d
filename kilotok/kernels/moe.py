"""Routed experts over tokens sorted by expert: one entry point (`moe_experts`), the PyTorch reference here,
the fused Triton kernel in triton/fused_moe.py.

The (token, expert) pairs are sorted by expert, every expert runs once over its contiguous group of rows,
and the gate-weighted results are summed back into their tokens. Expert weights are float tensors or FP8
weights (`Fp8Weight`, stacked over experts); FP8 experts run through the FP8 GEMM (kernels/fp8_gemm.py),
activations quantized per token as for any FP8 linear layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.fp8_gemm import fp8_linear
from kilotok.loader.fp8_weight import Fp8Weight

ExpertWeight = torch.Tensor | Fp8Weight
"""Stacked expert matrices [E, out, in] (nn.Linear layout), float or FP8."""


def sort_by_expert(experts: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ids [T, k] -> (order [T * k]: flat pair indices grouped by expert, group sizes [E])."""
    flat = experts.flatten()
    return flat.argsort(stable=True), torch.bincount(flat, minlength=num_experts)


def _expert_linear(x: torch.Tensor, weight: ExpertWeight, expert: int) -> torch.Tensor:
    if isinstance(weight, Fp8Weight):
        out_dtype = torch.float32 if x.dtype == torch.float32 else torch.bfloat16
        return fp8_linear(x, weight.expert(expert), out_dtype=out_dtype)
    return F.linear(x, weight[expert])


# The reference reads group sizes on the host, which a compiled graph cannot trace; it runs eagerly
# inside a compiled step (the fused kernel does not need this).
@torch.compiler.disable
def grouped_expert_mlp(rows: torch.Tensor, group_sizes: torch.Tensor, gate_up: ExpertWeight,
                       down: ExpertWeight) -> torch.Tensor:
    """SwiGLU experts over rows sorted by expert: rows [N, d], group_sizes [E] (summing to N),
    gate_up [E, 2f, d], down [E, d, f] -> [N, d] in the rows' dtype.

    Reference path: one pair of matrix products per expert that received rows."""
    outputs = []
    for expert, group in enumerate(rows.split(group_sizes.tolist())):
        if group.shape[0]:
            gate, up = _expert_linear(group, gate_up, expert).chunk(2, dim=-1)
            outputs.append(_expert_linear(F.silu(gate) * up, down, expert))
    return torch.cat(outputs) if outputs else rows.new_zeros(0, down.shape[1])


def moe_experts(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: ExpertWeight,
                down: ExpertWeight, gate_on_input: bool, backend: KernelBackend = KernelBackend.TORCH,
                pdl: bool = False) -> torch.Tensor:
    """sum over each token's k experts of weight * expert(x) (or expert(weight * x) with `gate_on_input`,
    as Llama 4 does). x [T, d], weights / experts [T, k] -> [T, d] in x's dtype. `pdl`: the Triton kernels
    may overlap their launches with the previous kernel's tail (kernels/triton/pdl.py)."""
    if backend == KernelBackend.TRITON:
        from kilotok.kernels.triton import matmul_ops  # Triton is an optional extra: imported on first use

        return matmul_ops.fused_moe(x, weights, experts, *_op_operands(gate_up), *_op_operands(down), gate_on_input,
                                    pdl)
    top_k = experts.shape[1]
    order, group_sizes = sort_by_expert(experts, gate_up.shape[0])
    tokens = order // top_k
    pair_weights = weights.flatten()[order, None]
    rows = x[tokens]
    if gate_on_input:
        rows = rows * pair_weights
    out_rows = grouped_expert_mlp(rows.to(_compute_dtype(gate_up, x)), group_sizes, gate_up, down)
    if not gate_on_input:
        out_rows = out_rows * pair_weights
    combined = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    return combined.index_add_(0, tokens, out_rows.float()).to(x.dtype)


def _op_operands(weight: ExpertWeight) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """An expert weight as the fused MoE op takes it: codes, scales (None for float experts), block."""
    if isinstance(weight, Fp8Weight):
        return weight.data, weight.scale, list(weight.block)
    return weight, None, [1, 1]


def _compute_dtype(weight: ExpertWeight, x: torch.Tensor) -> torch.dtype:
    """Float experts compute in their own dtype; FP8 experts take the activations' dtype."""
    return x.dtype if isinstance(weight, Fp8Weight) else weight.dtype
