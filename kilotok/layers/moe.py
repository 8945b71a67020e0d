"""The routed-expert layer: route (which k experts each token goes to, with what weight), then run the
experts through kernels/moe.py's `moe_experts` on the layer's kernel backend (the PyTorch reference sorts the
(token, expert) pairs by expert and runs every expert once over its rows; the Triton backend fuses that).
"""

from __future__ import annotations

import torch
from torch import nn

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.moe import ExpertWeight, moe_experts
from kilotok.loader.fp8_weight import Fp8Weight


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


class SparseMoe(nn.Module):
    """Router + routed experts (+ an always-on shared expert, as in Llama 4). Takes and returns [T, d].

    Experts are float tensors or FP8 weights (stacked `Fp8Weight`s, their codes and scales kept as buffers);
    either kind runs on `backend` (with PDL where `pdl` asks: kernels/triton/pdl.py)."""

    def __init__(self, router: nn.Module, gate_up: ExpertWeight, down: ExpertWeight, top_k: int, scoring: str,
                 renormalize: bool, gate_on_input: bool, shared_expert: nn.Module | None = None,
                 backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False) -> None:
        super().__init__()
        self.router = router
        self.blocks: dict[str, tuple[int, int]] = {}
        self._hold("gate_up", gate_up)
        self._hold("down", down)
        self.top_k = top_k
        self.scoring = scoring
        self.renormalize = renormalize
        self.gate_on_input = gate_on_input
        self.shared_expert = shared_expert
        self.backend = backend
        self.pdl = pdl

    def _hold(self, name: str, weight: ExpertWeight) -> None:
        if isinstance(weight, Fp8Weight):
            self.register_buffer(name, weight.data.contiguous())
            self.register_buffer(f"{name}_scale", weight.scale.contiguous())
            self.blocks[name] = weight.block
        else:
            setattr(self, name, nn.Parameter(weight.contiguous(), requires_grad=False))

    def experts(self, name: str) -> ExpertWeight:
        """The `gate_up` or `down` expert weights as the kernels take them."""
        if name in self.blocks:
            return Fp8Weight(getattr(self, name), getattr(self, f"{name}_scale"), self.blocks[name])
        return getattr(self, name)

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, experts = route(self.router(x), self.top_k, self.scoring, self.renormalize)
        out = moe_experts(x, weights, experts, self.experts("gate_up"), self.experts("down"), self.gate_on_input,
                          self.backend, self.pdl)
        if self.shared_expert is not None:
            out = out + self.shared_expert(x).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        experts, twice_f, d = self.gate_up.shape
        return (f"experts={experts}, top_k={self.top_k}, hidden={d}, intermediate={twice_f // 2}, "
                f"scoring={self.scoring}, dtype={self.gate_up.dtype}")
