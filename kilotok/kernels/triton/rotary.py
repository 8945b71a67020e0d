"""RoPE applied in place to q and k, one program per token covering all its heads: each rotated pair is
read and written once, with the token's cos/sin row gathered by position. Both layouts of the pairs: halves
(x[j], x[j + D/2]: Llama) and adjacent (x[2j], x[2j + 1]: Llama 4). Llama 4's QK L2 norm, which follows
RoPE, is fused in: the rotated head is still in registers. Rotation is fp32 and rounded to the activation
dtype before the norm, as the reference rounds between its two ops (kernels/rotary.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.errors import InvalidRequestError
from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer


@triton.jit
def _rotate_heads(x_ptr, token, token_stride, head_stride, num_heads, cos, sin, pairs, pair_in_head, half, eps,
                  INTERLEAVED: tl.constexpr, L2_NORM: tl.constexpr, BLOCK_HEADS: tl.constexpr):
    heads = tl.arange(0, BLOCK_HEADS)[:, None]
    mask = (heads < num_heads) & pair_in_head
    if INTERLEAVED:
        first = 2 * pairs
        second = first + 1
    else:
        first = pairs
        second = pairs + half
    base = x_ptr + token * token_stride + heads * head_stride
    x1 = tl.load(base + first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + second, mask=mask, other=0.0).to(tl.float32)
    dtype = x_ptr.dtype.element_ty
    rotated1 = (x1 * cos - x2 * sin).to(dtype)
    rotated2 = (x2 * cos + x1 * sin).to(dtype)
    if L2_NORM:
        r1 = rotated1.to(tl.float32)
        r2 = rotated2.to(tl.float32)
        inverse_rms = tl.rsqrt(tl.sum(r1 * r1 + r2 * r2, axis=1) / (2 * half) + eps)[:, None]
        rotated1 = (r1 * inverse_rms).to(dtype)
        rotated2 = (r2 * inverse_rms).to(dtype)
    tl.store(base + first, rotated1, mask=mask)
    tl.store(base + second, rotated2, mask=mask)


@triton.jit
def _rope_tokens(q_ptr, k_ptr, positions_ptr, cos_ptr, sin_ptr,
                 q_token_stride, q_head_stride, k_token_stride, k_head_stride,
                 num_q_heads, num_k_heads, half, eps,
                 INTERLEAVED: tl.constexpr, L2_NORM: tl.constexpr, BLOCK_PAIRS: tl.constexpr,
                 BLOCK_Q_HEADS: tl.constexpr, BLOCK_K_HEADS: tl.constexpr, USE_PDL: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pairs = tl.arange(0, BLOCK_PAIRS)[None, :]
    pair_in_head = pairs < half
    # Positions and tables are step inputs, not the previous kernel's output: read them before waiting.
    position = tl.load(positions_ptr + token).to(tl.int64)
    cos = tl.load(cos_ptr + position * half + pairs, mask=pair_in_head, other=0.0)
    sin = tl.load(sin_ptr + position * half + pairs, mask=pair_in_head, other=0.0)
    wait_for_producer(USE_PDL)
    _rotate_heads(q_ptr, token, q_token_stride, q_head_stride, num_q_heads, cos, sin, pairs, pair_in_head, half,
                  eps, INTERLEAVED, L2_NORM, BLOCK_Q_HEADS)
    _rotate_heads(k_ptr, token, k_token_stride, k_head_stride, num_k_heads, cos, sin, pairs, pair_in_head, half,
                  eps, INTERLEAVED, L2_NORM, BLOCK_K_HEADS)
    release_dependents(USE_PDL)


def apply_rope_(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                interleaved: bool, l2_norm_eps: float | None, pdl: bool) -> None:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] (unit stride in D, any token and head strides) in place;
    cos and sin are [max_positions, D/2] fp32 tables, positions [T]."""
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise InvalidRequestError("the RoPE kernel rotates q and k in place: they need unit stride in head_dim")
    tokens, num_q_heads, head_dim = q.shape
    if tokens == 0:
        return
    half = head_dim // 2
    use_pdl = pdl_enabled(pdl, q.device)
    _rope_tokens[(tokens,)](
        q, k, positions, cos.contiguous(), sin.contiguous(),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), num_q_heads, k.shape[1], half,
        l2_norm_eps if l2_norm_eps is not None else 0.0,
        INTERLEAVED=interleaved, L2_NORM=l2_norm_eps is not None, BLOCK_PAIRS=triton.next_power_of_2(half),
        BLOCK_Q_HEADS=triton.next_power_of_2(num_q_heads), BLOCK_K_HEADS=triton.next_power_of_2(k.shape[1]),
        USE_PDL=use_pdl, **launch_options(use_pdl),
    )
