"""Expert routing: which k experts each token goes to, and with what weight."""

from __future__ import annotations

import torch


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
