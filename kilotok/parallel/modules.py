"""The communicating modules put around a rank's built layers: one all-reduce after each row-parallel
projection (o_proj ends the attention block, down_proj the MLP), a vocabulary-parallel embedding, and an
LM head whose vocabulary slices are gathered on rank 0, the only rank that samples."""

from __future__ import annotations

import torch
from torch import nn

from kilotok.layers.moe import SparseMoe
from kilotok.models.causal_lm import MLP, CausalLM
from kilotok.models.config import MoeConfig
from kilotok.parallel.comm import Communicator
from kilotok.parallel.experts import ExpertParallelMoe
from kilotok.parallel.layout import RankLayout


class RowParallel(nn.Module):
    """A linear layer over this rank's slice of the input features: partial outputs summed over ranks."""

    def __init__(self, linear: nn.Module, comm: Communicator) -> None:
        super().__init__()
        self.linear = linear
        self.comm = comm

    @property
    def weight_bytes(self) -> int:
        return self.linear.weight_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(self.linear(x))


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + n) of the embedding; a token outside them contributes zeros, so the sum over
    ranks is exactly the one row that holds it."""

    def __init__(self, weight: torch.Tensor, start: int, comm: Communicator) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.start = start
        self.comm = comm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        rows = self.weight[local.masked_fill(outside, 0)].masked_fill(outside[:, None], 0)
        return self.comm.all_reduce(rows)


class VocabParallelHead(nn.Module):
    """This rank's vocabulary rows of the LM head; rank 0 gets the whole vocabulary's logits."""

    def __init__(self, linear: nn.Module, comm: Communicator) -> None:
        super().__init__()
        self.linear = linear
        self.comm = comm

    @property
    def weight_bytes(self) -> int:
        return self.linear.weight_bytes

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.comm.gather_columns(self.linear(hidden).float())


def parallelize(model: CausalLM, moe: MoeConfig | None, layout: RankLayout, comm: Communicator) -> CausalLM:
    """Put the communication around a model built from one rank's shard (parallel/shard.py); `moe` is the
    whole model's expert config, whose router scores every expert."""
    model.embed_tokens = VocabParallelEmbedding(model.embed_tokens.weight, layout.vocab.start, comm)
    model.lm_head = VocabParallelHead(model.lm_head, comm)
    for layer in model.layers:
        layer.self_attn.o_proj = RowParallel(layer.self_attn.o_proj, comm)
        if isinstance(layer.mlp, MLP):
            layer.mlp.down_proj = RowParallel(layer.mlp.down_proj, comm)
        elif isinstance(layer.mlp, SparseMoe):
            layer.mlp = ExpertParallelMoe(layer.mlp, moe.num_experts_per_tok, layout.experts.start, comm)
    return model
