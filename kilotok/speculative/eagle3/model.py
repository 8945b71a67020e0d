"""The EAGLE-3 draft head: fuse three target layers, run one decoder layer, predict over a small vocabulary.

The layer's attention reads the normalised token embedding and the normalised feature side by side (2d
wide), while the feature itself is the residual stream. Parameter names follow the EAGLE-3 reference
checkpoints (fc, midlayer.*, norm, lm_head, d2t, t2d) so a state dict maps onto that layout one to one.
The key/value cache is the caller's: `forward` takes earlier keys and an explicit mask, which serves both
training-time test unrolls and draft trees with one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kilotok.layers.norm import RMSNorm
from kilotok.layers.rotary import RotaryEmbedding
from kilotok.speculative.eagle3.config import Eagle3Config


@dataclass
class Eagle3Output:
    hidden: torch.Tensor
    """[B, T, d] midlayer output before the final norm: the feature fed back at the next draft step."""
    logits: torch.Tensor
    """[B, T, draft_vocab] fp32."""
    k: torch.Tensor
    """[B, T, Hkv, D] this call's keys, rotary applied: append them to past_k for later calls."""
    v: torch.Tensor
    """[B, T, Hkv, D] this call's values."""


def _trainable_norm(size: int, eps: float) -> RMSNorm:
    norm = RMSNorm(size, eps)
    norm.weight.requires_grad_(True)
    return norm


class Eagle3Attention(nn.Module):
    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        d, head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, head_dim
        self.q_proj = nn.Linear(2 * d, config.num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(2 * d, config.num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(2 * d, config.num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_heads * head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: RotaryEmbedding,
                past_k: torch.Tensor | None, past_v: torch.Tensor | None,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch * length, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch * length, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim)
        q, k = rotary(positions.reshape(-1), q, k)
        q = q.view(batch, length, self.num_heads, self.head_dim)
        k = k.view(batch, length, self.num_kv_heads, self.head_dim)
        keys = k if past_k is None else torch.cat((past_k.to(k.dtype), k), dim=1)
        values = v if past_v is None else torch.cat((past_v.to(v.dtype), v), dim=1)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
            attn_mask=mask[:, None], enable_gqa=True,
        )
        out = self.o_proj(attended.transpose(1, 2).reshape(batch, length, -1))
        return out, k, v


class Eagle3MLP(nn.Module):
    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Eagle3MidLayer(nn.Module):
    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        self.input_layernorm = _trainable_norm(config.hidden_size, config.rms_norm_eps)
        self.hidden_norm = _trainable_norm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Eagle3Attention(config)
        self.post_attention_layernorm = _trainable_norm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Eagle3MLP(config)


class Eagle3DraftModel(nn.Module):
    """`target_embedding` [target_vocab, d] is the target's, shared and frozen; it is never saved."""

    def __init__(self, config: Eagle3Config, target_embedding: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embed_tokens = nn.Embedding.from_pretrained(target_embedding, freeze=True)
        self.fc = nn.Linear(3 * d, d, bias=False)
        self.midlayer = Eagle3MidLayer(config)
        self.norm = _trainable_norm(d, config.rms_norm_eps)
        self.lm_head = nn.Linear(d, config.draft_vocab_size, bias=False)
        self.rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta,
                                      config.rope_scaling)
        # Until a vocabulary is chosen, draft id i is target id i (d2t holds offsets: target = draft + d2t).
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
        t2d = torch.zeros(config.target_vocab_size, dtype=torch.bool)
        t2d[: config.draft_vocab_size] = True
        self.register_buffer("t2d", t2d)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the head computes in: its norms', which stay float when its linears are quantized."""
        return self.norm.weight.dtype

    def set_draft_vocab(self, target_ids: torch.Tensor) -> None:
        """Draft id i stands for target id `target_ids[i]` (sorted ascending, as the reference stores it)."""
        target_ids = target_ids.to(self.d2t.device, torch.int64).sort().values
        if target_ids.numel() != self.config.draft_vocab_size:
            raise ValueError(f"need {self.config.draft_vocab_size} draft tokens, got {target_ids.numel()}")
        self.d2t.copy_(target_ids - torch.arange(target_ids.numel(), device=target_ids.device))
        self.t2d.zero_()
        self.t2d[target_ids] = True

    def draft_vocab_target_ids(self) -> torch.Tensor:
        """[draft_vocab] the target id of every draft id."""
        return self.draft_to_target(torch.arange(self.config.draft_vocab_size, device=self.d2t.device))

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def fuse(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """[..., 3d] (target layers concatenated in aux_layer_ids order) -> [..., d]."""
        return self.fc(aux_hidden.to(self.compute_dtype))

    def forward(self, input_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                past_k: torch.Tensor | None, past_v: torch.Tensor | None, mask: torch.Tensor) -> Eagle3Output:
        """Every query row of `mask` must allow at least one key (its own), or its output is NaN."""
        dtype = self.compute_dtype
        layer = self.midlayer
        residual = hidden.to(dtype)
        embedded = self.embed_tokens(input_ids).to(dtype)
        x = torch.cat((layer.input_layernorm(embedded), layer.hidden_norm(residual)), dim=-1)
        attended, k, v = layer.self_attn(x, positions, self.rotary, past_k, past_v, mask)
        residual = residual + attended
        out = residual + layer.mlp(layer.post_attention_layernorm(residual))
        logits = self.lm_head(self.norm(out)).float()
        return Eagle3Output(hidden=out, logits=logits, k=k, v=v)
