"""Attention over the paged KV cache: one entry point, a PyTorch reference here, device kernels beside it.

Model code calls `store_kv` and `paged_attention` and never looks at which implementation runs. The
reference is registered as a custom op so that `torch.compile` treats it as one opaque call: the decode
graph keeps static shapes while the op itself reads the (data-dependent) context lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kilotok.engine.attention_metadata import AttentionMetadata


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write new keys/values [T, Hkv, D] into caches [num_blocks, block_size, Hkv, D] at flat slots."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """q: [T, Hq, D] -> [T, Hq, D]. Keys are each sequence's cached tokens, new ones included."""
    if meta.kv_gather_index is not None:
        return decode_attention(q, k_cache, v_cache, meta.kv_gather_index, meta.kv_valid, scale)
    return torch.ops.kilotok.paged_attention(
        q, k_cache, v_cache, meta.block_tables, meta.context_lens, meta.query_start_loc, meta.tree_mask, scale
    )


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_gather_index: torch.Tensor,
    kv_valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One new token per sequence, q: [B, Hq, D]. Pure tensor ops over a gathered [B, L] key window, so
    a compiled decode step fuses it; the window length is the only dynamic shape."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    keys = k_cache.view(-1, num_kv_heads, head_dim)[kv_gather_index].float()
    values = v_cache.view(-1, num_kv_heads, head_dim)[kv_gather_index].float()
    grouped_q = q.float().view(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.einsum("bhgd,blhd->bhgl", grouped_q, keys) * scale
    scores = scores.masked_fill(~kv_valid[:, None, None, :], float("-inf"))
    attended = torch.einsum("bhgl,blhd->bhgd", scores.softmax(dim=-1), values)
    return attended.reshape(batch, num_heads, head_dim).to(q.dtype)


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    tree_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """One sequence at a time: gather its blocks, then SDPA with a causal or tree mask."""
    block_size = k_cache.shape[1]
    starts = query_start_loc.tolist()
    lengths = context_lens.tolist()
    out = torch.empty_like(q)
    for b, context_len in enumerate(lengths):
        queries = q[starts[b] : starts[b + 1]]
        num_new = queries.shape[0]
        if num_new == 0:
            continue
        blocks = block_tables[b, : -(-context_len // block_size)].long()
        keys = k_cache[blocks].flatten(0, 1)[:context_len]
        values = v_cache[blocks].flatten(0, 1)[:context_len]
        mask = None
        if num_new > 1:
            mask = _new_token_mask(num_new, context_len, None if tree_mask is None else tree_mask[b], q.device)
        attended = F.scaled_dot_product_attention(
            queries.transpose(0, 1),
            keys.transpose(0, 1).to(q.dtype),
            values.transpose(0, 1).to(q.dtype),
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        out[starts[b] : starts[b + 1]] = attended.transpose(0, 1)
    return out


# Registered as an op so torch.compile treats the reference as one opaque call with a known output shape.
_paged_attention_op = torch.library.custom_op("kilotok::paged_attention", mutates_args=())(paged_attention_reference)
_paged_attention_op.register_fake(lambda q, *_: torch.empty_like(q))


def _new_token_mask(num_new: int, context_len: int, tree_mask: torch.Tensor | None, device) -> torch.Tensor:
    """[num_new, context_len] bool: every new token sees the whole cached prefix, and the new tokens
    see each other causally (or as the draft tree says)."""
    prefix_len = context_len - num_new
    mask = torch.ones(num_new, context_len, dtype=torch.bool, device=device)
    if tree_mask is None:
        mask[:, prefix_len:] = torch.ones(num_new, num_new, dtype=torch.bool, device=device).tril()
    else:
        mask[:, prefix_len:] = tree_mask
    return mask
