"""A mixture-of-experts layer whose experts are spread over ranks. Every rank holds the (replicated)
router and scores all experts for every token, so all ranks agree on the routing; each runs only the
(token, expert) pairs of its own experts, over its slice of their width, plus its slice of the shared
expert, and one all-reduce combines them: the dispatch is local selection, the combine is the sum."""

from __future__ import annotations

import torch
from torch import nn

from kilotok.kernels.moe import moe_experts
from kilotok.layers.moe import SparseMoe, route
from kilotok.parallel.comm import Communicator


class ExpertParallelMoe(nn.Module):
    def __init__(self, local: SparseMoe, top_k: int, first_expert: int, comm: Communicator) -> None:
        """`local` holds this rank's experts (numbered from 0) and the whole router; `first_expert` is the
        global id of its expert 0; `top_k` is the model's experts per token."""
        super().__init__()
        self.local = local
        self.top_k = top_k
        self.first_expert = first_expert
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moe = self.local
        weights, experts = route(moe.router(x), self.top_k, moe.scoring, moe.renormalize)
        out = self._local_experts(x, weights, experts)
        if moe.shared_expert is not None:
            out = out + moe.shared_expert(x).float()
        return self.comm.all_reduce(out).to(x.dtype)

    def _local_experts(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """This rank's part of sum over each token's experts of weight * expert(x), in fp32, [T, d]: each of
        its (token, expert) pairs goes through the experts kernel as a token of its own."""
        moe = self.local
        local_ids = experts - self.first_expert
        tokens, slots = ((local_ids >= 0) & (local_ids < moe.num_experts)).nonzero(as_tuple=True)
        out_pairs = moe_experts(x[tokens], weights[tokens, slots][:, None], local_ids[tokens, slots][:, None],
                                moe.experts("gate_up"), moe.experts("down"), moe.gate_on_input, moe.backend, moe.pdl)
        combined = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        return combined.index_add_(0, tokens, out_pairs.float())
