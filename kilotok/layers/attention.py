"""Self-attention over the paged KV cache, with the per-layer variations of the model families:

- q/k norm: Qwen3's learned per-head RMSNorm before RoPE, or Llama 4's weightless L2 norm after RoPE
  (its RoPE layers only);
- RoPE on halves (Llama) or on adjacent pairs (Llama 4's complex form), or none (Llama 4's NoPE layers);
- chunked local attention (Llama 4's RoPE layers) and attention temperature tuning (its NoPE layers).

The projections are fused (qkv), so a decode step runs two matrix products here. Keys and values go
through `store_kv` and `paged_attention` (kernels/attention.py), which choose the implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from kilotok.kernels.attention import paged_attention, store_kv
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.norm import l2_normalize
from kilotok.layers.norm import RMSNorm
from kilotok.layers.rotary import RotaryEmbedding


def temperature_scales(positions: torch.Tensor, floor_scale: float, attn_scale: float) -> torch.Tensor:
    """Llama 4's per-position query scale on NoPE layers, [T, 1, 1] in fp32."""
    scales = torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale)) * attn_scale + 1.0
    return scales[:, None, None]


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, qkv_proj: nn.Module, o_proj: nn.Module,
                 rotary: RotaryEmbedding | None, rope_interleaved: bool = False, q_norm: RMSNorm | None = None,
                 k_norm: RMSNorm | None = None, l2_norm_eps: float | None = None, chunk_size: int = 0,
                 temperature: tuple[float, float] | None = None, backend: KernelBackend = KernelBackend.TORCH,
                 pdl: bool = False, cpu_kernel: bool = False) -> None:
        """`rotary` None: no RoPE. `l2_norm_eps`: Llama 4's QK norm. `chunk_size` > 0: each query sees only
        its own chunk of positions. `temperature` (floor_scale, attn_scale): Llama 4's query scaling.
        `backend` picks the attention kernels; `pdl` lets Triton kernels overlap their launches; `cpu_kernel`
        runs the C++ attention ops (kernels/cpu_attention.py), for a layer on the CPU where they built."""
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.qkv_proj = qkv_proj
        self.o_proj = o_proj
        self.rotary = rotary
        self.rope_interleaved = rope_interleaved
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.l2_norm_eps = l2_norm_eps
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.backend = backend
        self.pdl = pdl
        self.cpu_kernel = cpu_kernel
        # Filled by the model runner once the cache is allocated: [num_blocks, block_size, Hkv, D].
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(positions, q, k, self.rope_interleaved, self.l2_norm_eps)
        elif self.l2_norm_eps is not None:
            q, k = l2_normalize(q, self.l2_norm_eps), l2_normalize(k, self.l2_norm_eps)
        if self.temperature is not None:
            q = (q * temperature_scales(positions, *self.temperature)).to(q.dtype)
        store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping, self.backend, self.pdl)
        attended = paged_attention(q, self.k_cache, self.v_cache, meta, self.scale, self.chunk_size, self.backend,
                                   self.pdl, self.cpu_kernel)
        return self.o_proj(attended.reshape(-1, q_size))
