"""The model shell every family is built into: token embedding, decoder layers (attention, then a SwiGLU
MLP or a mixture of experts, each behind an RMSNorm and a residual add), a final norm and the LM head.
The engine, the KV cache and the drafters see this one interface whatever the family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.layers.attention import Attention
from kilotok.layers.norm import RMSNorm
from kilotok.models.config import ModelConfig


class MLP(nn.Module):
    """SwiGLU over a fused gate/up projection, so a decode step runs two matrix products here."""

    def __init__(self, gate_up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attention: Attention, mlp: nn.Module):
        """`mlp` maps [T, d] to [T, d]: an `MLP`, or a `SparseMoe` on mixture-of-experts layers."""
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = attention
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        hidden = hidden + self.self_attn(positions, self.input_layernorm(hidden), meta)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class CausalLM(nn.Module):
    """`forward` maps a flat batch of new tokens [T] to final hidden states [T, d]; `compute_logits`
    applies the head only to the rows that need it (the last token of each sequence, or a draft tree).

    `aux_hidden_layers` names layers whose *input* hidden states are also returned, for EAGLE-3 drafts.
    """

    def __init__(self, config: ModelConfig, embed_tokens: torch.Tensor, layers: list[DecoderLayer],
                 lm_head: nn.Module, activation_dtype: torch.dtype):
        super().__init__()
        self.config = config
        self.activation_dtype = activation_dtype
        self.embed_tokens = nn.Embedding.from_pretrained(embed_tokens.to(activation_dtype), freeze=True)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = lm_head
        self.aux_hidden_layers: tuple[int, ...] = ()

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = self.embed_tokens(input_ids)
        aux_hidden = []
        for index, layer in enumerate(self.layers):
            if index in self.aux_hidden_layers:
                aux_hidden.append(hidden)
            hidden = layer(positions, hidden, meta)
        return self.norm(hidden), aux_hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
