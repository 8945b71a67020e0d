"""Attention over the paged KV cache: one entry point, a PyTorch reference here, Triton kernels beside it
(kernels/triton/), chosen by the `backend` argument.

Model code calls `store_kv` and `paged_attention` and never looks at which implementation runs. The
reference is registered as a custom op so that `torch.compile` treats it as one opaque call: the decode
graph keeps static shapes while the op itself reads the (data-dependent) context lengths. The Triton
kernels read the block table directly: decode rows through `block_tables` and `context_lens` (plus the
tree mask when verifying a draft tree) rather than the gathered key window the reference uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.cpu_attention import cpu_decode_attention, cpu_prefill_attention


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False,
) -> None:
    """Write new keys/values [T, Hkv, D] into caches [num_blocks, block_size, Hkv, D] at flat slots."""
    if backend is KernelBackend.TRITON:
        _triton_ops().store_kv(k, v, k_cache, v_cache, slot_mapping, pdl)
        return
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    attention_chunk_size: int = 0, backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False,
    cpu_kernel: bool = False,
) -> torch.Tensor:
    """q: [T, Hq, D] -> [T, Hq, D]. Keys are each sequence's cached tokens, new ones included.

    With `attention_chunk_size` C > 0 (Llama 4's local layers), a query at position p sees only the keys
    of its own chunk, positions C * (p // C) .. p. `pdl` lets Triton kernels overlap their launches;
    `cpu_kernel` runs the C++ ops (kernels/cpu_attention.py), which the caller (the builder, for a model
    on the CPU) has checked are available."""
    if backend is KernelBackend.TRITON:
        return _triton_attention(q, k_cache, v_cache, meta, scale, attention_chunk_size, pdl)
    if meta.kv_gather_index is not None:
        # The runner may hand the window over as [B, chunks, VALUE_CHUNK] (see model_runner.py).
        kv_valid = meta.kv_valid.flatten(1)
        if attention_chunk_size:
            kv_valid = chunked_window_mask(kv_valid, attention_chunk_size)
        if cpu_kernel:
            return cpu_decode_attention(q, k_cache, v_cache, meta.kv_gather_index.flatten(1), kv_valid, scale)
        return decode_attention(q, k_cache, v_cache, meta.kv_gather_index.flatten(1), kv_valid, scale)
    if cpu_kernel:
        return cpu_prefill_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens, meta.query_start_loc,
                                     scale, attention_chunk_size)
    return torch.ops.kilotok.paged_attention(
        q, k_cache, v_cache, meta.block_tables, meta.context_lens, meta.query_start_loc, scale, attention_chunk_size,
    )


def _triton_ops():
    # Imported on first use: Triton is an optional extra, needed only when its backend was chosen.
    from kilotok.kernels.triton import ops

    return ops


def _triton_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                      scale: float, attention_chunk_size: int, pdl: bool) -> torch.Tensor:
    ops = _triton_ops()
    if meta.decode_rows or meta.kv_gather_index is not None:  # decode rows: one query each
        return ops.paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens, meta.tree_mask,
                                          scale, attention_chunk_size, pdl)
    return ops.paged_prefill_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens,
                                       meta.query_start_loc, scale, attention_chunk_size, pdl)


def chunked_window_mask(kv_valid: torch.Tensor, chunk: int) -> torch.Tensor:
    """Restrict a gathered key window [B, L] to each row's own chunk. Window entry j holds key position j
    and the valid entries are a prefix ending at the query's own key, so the query's position is the
    number of valid entries minus one (padding rows, with only entry 0 valid, keep it)."""
    query_positions = kv_valid.sum(dim=-1, keepdim=True) - 1
    key_positions = torch.arange(kv_valid.shape[1], device=kv_valid.device)
    return kv_valid & (key_positions >= query_positions // chunk * chunk)


KEY_WINDOW_ALIGN = 64
VALUE_CHUNK = KEY_WINDOW_ALIGN // 2
"""Keys per fixed-shape matrix product in decode attention; half the window alignment, so every window
holds at least two chunks (dynamo specializes a dynamic dimension that first shows up as 1)."""


def aligned_window(num_keys: int) -> int:
    """Length of a gathered key window holding `num_keys` keys. Windows are padded (with masked keys) to a
    multiple of KEY_WINDOW_ALIGN because a compiled reduction's vector lanes and tail loop depend on the
    length: with aligned lengths a query's valid keys sum in the same order whether its window is its own
    (plain decode) or a longer one shared with draft-tree rows, and masked keys only add exact zeros."""
    return -(-num_keys // KEY_WINDOW_ALIGN) * KEY_WINDOW_ALIGN


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_gather_index: torch.Tensor,
    kv_valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One new token per sequence, q: [B, Hq, D]. Pure tensor ops over a gathered [B, L] key window (L a
    multiple of KEY_WINDOW_ALIGN), so a compiled decode step fuses it; L is the only dynamic shape.

    Each row must come out bit-identical whether it is decoded alone or verified beside a draft tree's
    other rows, so no reduction may change order with the batch or the window length. Scores are
    multiply-and-sum over the head dimension (einsum would pick a matrix-product layout by batch size).
    The weighted sum of values runs as matrix products over fixed VALUE_CHUNK-key chunks, whose shapes never
    change, added chunk by chunk in order: masked keys weigh exactly 0, and a multiply-and-sum here
    compiles to a scalar loop with a bounds check per element (docs/benchmarks.md has both costs)."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    num_chunks = kv_gather_index.shape[1] // VALUE_CHUNK
    keys = k_cache.view(-1, num_kv_heads, head_dim)[kv_gather_index].float().transpose(1, 2)
    values = v_cache.view(-1, num_kv_heads, head_dim)[kv_gather_index].float().transpose(1, 2)
    grouped_q = q.float().view(batch, num_kv_heads, group, 1, head_dim)
    scores = (grouped_q * keys[:, :, None]).sum(dim=-1) * scale
    scores = scores.masked_fill(~kv_valid[:, None, None, :], float("-inf"))
    chunked_probs = scores.softmax(dim=-1).view(batch, num_kv_heads, group, num_chunks, VALUE_CHUNK)
    chunked_values = values.reshape(batch, num_kv_heads, num_chunks, VALUE_CHUNK, head_dim)
    attended = torch.matmul(chunked_probs.transpose(2, 3), chunked_values).sum(dim=2)
    return attended.reshape(batch, num_heads, head_dim).to(q.dtype)


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    attention_chunk_size: int = 0,
) -> torch.Tensor:
    """One sequence at a time: gather its blocks, then SDPA with a causal mask."""
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
        if num_new > 1 or attention_chunk_size:
            mask = _new_token_mask(num_new, context_len, q.device, attention_chunk_size)
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


def _new_token_mask(num_new: int, context_len: int, device, attention_chunk_size: int = 0) -> torch.Tensor:
    """[num_new, context_len] bool: every new token sees the whole cached prefix (or, with a chunk size,
    the part in its own chunk), and the new tokens see each other causally."""
    prefix_len = context_len - num_new
    mask = torch.ones(num_new, context_len, dtype=torch.bool, device=device)
    mask[:, prefix_len:] = torch.ones(num_new, num_new, dtype=torch.bool, device=device).tril()
    if attention_chunk_size:
        positions = torch.arange(context_len, device=device)
        chunk_starts = positions[prefix_len:] // attention_chunk_size * attention_chunk_size
        mask &= positions[None, :] >= chunk_starts[:, None]
    return mask
