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
from kilotok.parallel.layout import RankLayout, Span


class _CollectiveLinear(nn.Module):
    """A rank's slice of a linear layer, followed by the collective that joins the slices."""

    def __init__(self, linear: nn.Module, comm: Communicator) -> None:
        super().__init__()
        self.linear = linear
        self.comm = comm

    @property
    def weight_bytes(self) -> int:
        return self.linear.weight_bytes


class RowParallel(_CollectiveLinear):
    """A linear layer over this rank's slice of the input features: partial outputs summed over ranks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(self.linear(x))


class VocabParallelEmbedding(nn.Module):
    """Embeds the vocabulary rows `vocab`; a token outside them contributes zeros, so the sum over ranks is
    exactly the one row that holds it. `weight` holds those rows, or with `whole_table` the whole table
    (rank 0 keeps it when an EAGLE-3 draft, which embeds with the target's table, runs there)."""

    def __init__(self, weight: torch.Tensor, vocab: Span, comm: Communicator, whole_table: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.vocab = vocab
        self.offset = vocab.start if whole_table else 0
        self.comm = comm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.vocab.start
        outside = (local < 0) | (local >= self.vocab.size)
        rows = self.weight[local.masked_fill(outside, 0) + self.offset].masked_fill(outside[:, None], 0)
        return self.comm.all_reduce(rows)


class VocabParallelHead(_CollectiveLinear):
    """This rank's vocabulary rows of the LM head; rank 0 gets the whole vocabulary's logits."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.comm.gather_columns(self.linear(hidden).float())


def parallelize(model: CausalLM, moe: MoeConfig | None, layout: RankLayout, comm: Communicator,
                whole_embedding: torch.Tensor | None = None) -> CausalLM:
    """Put the communication around a model built from one rank's shard (parallel/shard.py); `moe` is the
    whole model's expert config, whose router scores every expert. `whole_embedding`: keep the whole table."""
    if whole_embedding is None:
        model.embed_tokens = VocabParallelEmbedding(model.embed_tokens.weight, layout.vocab, comm)
    else:
        model.embed_tokens = VocabParallelEmbedding(whole_embedding.to(model.activation_dtype), layout.vocab, comm,
                                                    whole_table=True)
    model.lm_head = VocabParallelHead(model.lm_head, comm)
    for layer in model.layers:
        layer.self_attn.o_proj = RowParallel(layer.self_attn.o_proj, comm)
        if isinstance(layer.mlp, MLP):
            layer.mlp.down_proj = RowParallel(layer.mlp.down_proj, comm)
        elif isinstance(layer.mlp, SparseMoe):
            layer.mlp = ExpertParallelMoe(layer.mlp, moe.num_experts_per_tok, layout.experts.start, comm)
    return model
