"""Llama attention with the per-layer variations of the mixture-of-experts families.

- q/k norm: Qwen3's learned per-head RMSNorm before RoPE, or Llama 4's weightless L2 norm after RoPE
  (RoPE layers only);
- RoPE on adjacent pairs (Llama 4's complex form) or on halves, or none (Llama 4's NoPE layers);
- chunked local attention (Llama 4's RoPE layers) and attention temperature tuning (its NoPE layers).

Plain Llama keeps models/llama.LlamaAttention, so none of these checks run on the dense path.
"""

from __future__ import annotations

import torch
from torch import nn

from kilotok.config import ModelConfig
from kilotok.kernels.attention import paged_attention, store_kv
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.layers.norm import RMSNorm
from kilotok.layers.rotary import RotaryEmbedding
from kilotok.models.llama import LlamaAttention


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent pairs (x[2i], x[2i+1]): the complex product Llama 4 computes, in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def l2_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    x_fp32 = x.float()
    return (x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def temperature_scales(positions: torch.Tensor, floor_scale: float, attn_scale: float) -> torch.Tensor:
    """Llama 4's per-position query scale on NoPE layers, [T, 1, 1] in fp32."""
    scales = torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale)) * attn_scale + 1.0
    return scales[:, None, None]


class VariantAttention(LlamaAttention):
    def __init__(self, config: ModelConfig, layer_index: int, qkv_proj: nn.Module, o_proj: nn.Module,
                 rotary: RotaryEmbedding, q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None):
        super().__init__(config, qkv_proj, o_proj, rotary)
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.use_rope = layer_index not in config.nope_layers
        self.rope_interleaved = config.rope_interleaved
        self.l2_norm_eps = config.rms_norm_eps if config.qk_norm == "l2" and self.use_rope else None
        self.chunk_size = config.attention_chunk_size if layer_index in config.chunked_layers else 0
        self.temperature = (config.floor_scale, config.attn_scale)
        self.tune_temperature = config.attn_temperature_tuning and not self.use_rope

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = self._rope(positions, q, k)
        if self.l2_norm_eps is not None:
            q, k = l2_normalize(q, self.l2_norm_eps), l2_normalize(k, self.l2_norm_eps)
        if self.tune_temperature:
            q = (q * temperature_scales(positions, *self.temperature)).to(q.dtype)
        store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        attended = paged_attention(q, self.k_cache, self.v_cache, meta, self.scale, self.chunk_size)
        return self.o_proj(attended.reshape(-1, q_size))

    def _rope(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.rope_interleaved:
            return self.rotary(positions, q, k)
        cos = self.rotary.cos[positions].unsqueeze(1)
        sin = self.rotary.sin[positions].unsqueeze(1)
        return rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
