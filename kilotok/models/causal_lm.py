"""The model shell every family is built into: token embedding, decoder layers (attention, then a SwiGLU
MLP or a mixture of experts, each behind an RMSNorm and a residual add), a final norm and the LM head.
The engine, the KV cache and the drafters see this one interface whatever the family.

The residual stream is carried beside each layer's output rather than added at its end, so that every add
lands right before a norm and the two run as one kernel (`RMSNorm.add_and_norm`): layer i returns its MLP's
output and the stream so far, layer i + 1 (or the final norm) adds them. The sums are the same as adding at
the end of each layer, in the same dtype, so the torch backend's numerics are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from kilotok.kernels.activation import swiglu
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.kernels.backend import KernelBackend
from kilotok.layers.attention import Attention
from kilotok.layers.norm import RMSNorm
from kilotok.models.config import ModelConfig


class MLP(nn.Module):
    """SwiGLU over a fused gate/up projection, so a decode step runs two matrix products here."""

    def __init__(self, gate_up_proj: nn.Module, down_proj: nn.Module, backend: KernelBackend = KernelBackend.TORCH,
                 pdl: bool = False):
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.backend = backend
        self.pdl = pdl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_up_proj(x), self.backend, self.pdl))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attention: Attention, mlp: nn.Module,
                 backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False):
        """`mlp` maps [T, d] to [T, d]: an `MLP`, or a `SparseMoe` on mixture-of-experts layers. `backend` and
        `pdl` choose the norms' kernels."""
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend, pdl)
        self.self_attn = attention
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend, pdl)
        self.mlp = mlp

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it): their sum is the layer's output.
        `residual` None: `hidden` is the stream itself (the first layer)."""
        if residual is None:
            residual, normed = hidden, self.input_layernorm(hidden)
        else:
            normed, residual = self.input_layernorm.add_and_norm(hidden, residual)
        attended = self.self_attn(positions, normed, meta)
        normed, residual = self.post_attention_layernorm.add_and_norm(attended, residual)
        return self.mlp(normed), residual


class CausalLM(nn.Module):
    """`forward` maps a flat batch of new tokens [T] to final hidden states [T, d]; `compute_logits`
    applies the head only to the rows that need it (the last token of each sequence, or a draft tree).

    `aux_layers` names layers whose *input* hidden states are also returned, for EAGLE-3 drafts: an argument,
    not model state, so a compiled step with features and one without are two graphs that never share guards.
    """

    def __init__(self, config: ModelConfig, embed_tokens: torch.Tensor, layers: list[DecoderLayer],
                 lm_head: nn.Module, activation_dtype: torch.dtype, backend: KernelBackend = KernelBackend.TORCH,
                 pdl: bool = False, kv_cache_dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        self.activation_dtype = activation_dtype
        self.kv_cache_dtype = kv_cache_dtype or activation_dtype
        """The dtype whoever gives the attention layers their caches allocates them in."""
        self.embed_tokens = nn.Embedding.from_pretrained(embed_tokens.to(activation_dtype), freeze=True)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend, pdl)
        self.lm_head = lm_head

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
        aux_layers: tuple[int, ...] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = self.embed_tokens(input_ids)
        residual = None
        aux_hidden = []
        for index, layer in enumerate(self.layers):
            if index in aux_layers:
                aux_hidden.append(hidden if residual is None else residual + hidden)
            hidden, residual = layer(positions, hidden, residual, meta)
        return self.norm.add_and_norm(hidden, residual)[0], aux_hidden

    def allocate_kv_cache(self, shape: tuple[int, ...], device: torch.device | str) -> None:
        """Gives every attention layer zeroed key and value caches of `shape` in the KV-cache dtype. One
        tensor per layer and per K/V, not views of one big buffer: a compiled step that writes into views of
        a shared base would have the whole base copied around every step."""
        for layer in self.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=self.kv_cache_dtype, device=device)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=self.kv_cache_dtype, device=device)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
