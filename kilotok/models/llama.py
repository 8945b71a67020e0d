"""Llama: RMSNorm, rotary attention with grouped KV heads over the paged cache, SwiGLU, tied embeddings.

Projections are fused (qkv, gate_up) so a decode step runs four matrix products a layer. Linear layers
come from `make_linear`, so the same code runs fp32, bf16, int8 or int4 weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kilotok.config import ModelConfig
from kilotok.kernels.attention import paged_attention, store_kv
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.layers.norm import RMSNorm
from kilotok.layers.rotary import RotaryEmbedding


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, qkv_proj: nn.Module, o_proj: nn.Module, rotary: RotaryEmbedding):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        self.qkv_proj = qkv_proj
        self.o_proj = o_proj
        self.rotary = rotary
        # Filled by the model runner once the cache is allocated: [num_blocks, block_size, Hkv, D].
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        attended = paged_attention(q, self.k_cache, self.v_cache, meta, self.scale)
        return self.o_proj(attended.reshape(-1, q_size))


class LlamaMLP(nn.Module):
    def __init__(self, gate_up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attention: LlamaAttention, mlp: LlamaMLP):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = attention
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        hidden = hidden + self.self_attn(positions, self.input_layernorm(hidden), meta)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaForCausalLM(nn.Module):
    """`forward` maps a flat batch of new tokens [T] to final hidden states [T, d]; `compute_logits`
    applies the head only to the rows that need it (the last token of each sequence, or a draft tree).

    `aux_hidden_layers` names layers whose *input* hidden states are also returned, for EAGLE-3 drafts.
    """

    def __init__(self, config: ModelConfig, embed_tokens: torch.Tensor, layers: list[LlamaDecoderLayer],
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
