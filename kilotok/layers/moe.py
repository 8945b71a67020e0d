"""The routed-expert layer: route (which k experts each token goes to, with what weight), sort the (token,
expert) pairs by expert, run every expert once over its contiguous group of rows, then scatter the
weighted results back to their tokens.

`grouped_expert_mlp` is the seam where a fused grouped-GEMM kernel goes (it takes rows already sorted by
expert and the size of each expert's group); everything around it is a handful of whole-batch tensor ops,
with no Python loop over tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def route(logits: torch.Tensor, top_k: int, scoring: str, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] -> (weights [T, k] in the logits' dtype, expert ids [T, k] int64).

    "softmax" (Mixtral, Qwen3-MoE): the softmax over all experts, kept for the top k, rescaled to sum to
    one when `renormalize`. "sigmoid" (Llama 4): the sigmoid of each chosen expert's own logit.
    Scores are computed in fp32 whatever the activation dtype, as the reference models do.
    """
    if scoring == "sigmoid":
        top_logits, experts = logits.topk(top_k, dim=-1)
        return torch.sigmoid(top_logits.float()).to(logits.dtype), experts
    weights, experts = logits.float().softmax(dim=-1).topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), experts


def sort_by_expert(experts: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ids [T, k] -> (order [T * k]: flat pair indices grouped by expert, group sizes [E])."""
    flat = experts.flatten()
    return flat.argsort(stable=True), torch.bincount(flat, minlength=num_experts)


# The reference reads group sizes on the host, which a compiled graph cannot trace; it runs eagerly
# inside a compiled step (a fused device kernel would not need this).
@torch.compiler.disable
def grouped_expert_mlp(rows: torch.Tensor, group_sizes: torch.Tensor, gate_up: torch.Tensor,
                       down: torch.Tensor) -> torch.Tensor:
    """SwiGLU experts over rows sorted by expert: rows [N, d], group_sizes [E] (summing to N),
    gate_up [E, 2f, d], down [E, d, f] (nn.Linear layout) -> [N, d] in the weights' dtype.

    Reference path: one pair of matrix products per expert that received rows. The single host read of
    the group sizes is what a fused device kernel (reading sizes on the device) removes."""
    outputs = []
    for expert, group in enumerate(rows.split(group_sizes.tolist())):
        if group.shape[0]:
            gate, up = F.linear(group, gate_up[expert]).chunk(2, dim=-1)
            outputs.append(F.linear(F.silu(gate) * up, down[expert]))
    return torch.cat(outputs) if outputs else rows.new_zeros(0, down.shape[1])


def moe_experts(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor, gate_on_input: bool) -> torch.Tensor:
    """sum over each token's k experts of weight * expert(x) (or expert(weight * x) with `gate_on_input`,
    as Llama 4 does). x [T, d], weights / experts [T, k] -> [T, d] in x's dtype."""
    top_k = experts.shape[1]
    order, group_sizes = sort_by_expert(experts, gate_up.shape[0])
    tokens = order // top_k
    pair_weights = weights.flatten()[order, None]
    rows = x[tokens]
    if gate_on_input:
        rows = rows * pair_weights
    out_rows = grouped_expert_mlp(rows.to(gate_up.dtype), group_sizes, gate_up, down)
    if not gate_on_input:
        out_rows = out_rows * pair_weights
    combined = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    return combined.index_add_(0, tokens, out_rows.float()).to(x.dtype)


class SparseMoe(nn.Module):
    """Router + routed experts (+ an always-on shared expert, as in Llama 4). Takes and returns [T, d]."""

    def __init__(self, router: nn.Module, gate_up: torch.Tensor, down: torch.Tensor, top_k: int, scoring: str,
                 renormalize: bool, gate_on_input: bool, shared_expert: nn.Module | None = None) -> None:
        super().__init__()
        self.router = router
        self.gate_up = nn.Parameter(gate_up.contiguous(), requires_grad=False)
        self.down = nn.Parameter(down.contiguous(), requires_grad=False)
        self.top_k = top_k
        self.scoring = scoring
        self.renormalize = renormalize
        self.gate_on_input = gate_on_input
        self.shared_expert = shared_expert

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, experts = route(self.router(x), self.top_k, self.scoring, self.renormalize)
        out = moe_experts(x, weights, experts, self.gate_up, self.down, self.gate_on_input)
        if self.shared_expert is not None:
            out = out + self.shared_expert(x).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        experts, twice_f, d = self.gate_up.shape
        return (f"experts={experts}, top_k={self.top_k}, hidden={d}, intermediate={twice_f // 2}, "
                f"scoring={self.scoring}, dtype={self.gate_up.dtype}")
