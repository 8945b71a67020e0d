"""Prefill attention over the paged cache, for whole prompts and chunked prefill alike: the queries are a
sequence's new tokens, the keys everything cached for it, new tokens included (store_kv wrote them
first). The new tokens are the last of the sequence's context, so query i of n sits at position
context_len - n + i and sees keys up to its own position (causal), or, with a chunk size C (Llama 4's
chunked-local layers), only those from C * (position // C) on.

One program per (sequence, tile of queries, query head). The grid is sized from the flat row count, which
the host knows without reading the device: tiles past a sequence's own new tokens find no work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.kernels.triton.online_softmax import attend_tile, dot_in_fp32, finish, load_paged
from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer

QUERIES_PER_TILE = 16
KEYS_PER_TILE = 32
MIN_DOT = 16


@triton.jit
def _prefill_kernel(q, k_cache, v_cache, out, block_tables, context_lens, query_start_loc, scale,
                    q_row_stride, q_head_stride, table_stride,
                    CHUNK: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_HEADS: tl.constexpr,
                    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
                    QUERIES: tl.constexpr, KEYS: tl.constexpr, USE_PDL: tl.constexpr, DOT_FP32: tl.constexpr):
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // (NUM_HEADS // NUM_KV_HEADS)
    dims = tl.arange(0, DIM_PAD)
    table = block_tables + seq.to(tl.int64) * table_stride
    wait_for_producer(USE_PDL)
    first_row = tl.load(query_start_loc + seq)
    num_new = tl.load(query_start_loc + seq + 1) - first_row
    context_len = tl.load(context_lens + seq)
    new_index = tile * QUERIES + tl.arange(0, QUERIES)
    is_query = new_index < num_new
    query_positions = context_len - num_new + new_index
    rows = (first_row + new_index).to(tl.int64)
    dim_ok = dims[None, :] < HEAD_DIM
    q_tile = tl.load(q + rows[:, None] * q_row_stride + head * q_head_stride + dims[None, :],
                     mask=is_query[:, None] & dim_ok, other=0.0)
    # Keys this tile needs: up to its last query's position, from its first query's chunk on. A tile past
    # the sequence's new tokens gets an empty range.
    tile_start = context_len - num_new + tile * QUERIES
    key_end = tl.where(tile * QUERIES < num_new, tl.minimum(tile_start + QUERIES, context_len), 0)
    key_start = 0
    chunk_starts = tl.zeros((QUERIES,), dtype=tl.int32)
    if CHUNK > 0:
        key_start = tile_start // CHUNK * CHUNK
        chunk_starts = query_positions // CHUNK * CHUNK
    acc = tl.zeros((QUERIES, DIM_PAD), dtype=tl.float32)
    row_max = tl.full((QUERIES,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((QUERIES,), dtype=tl.float32)
    for start in range(key_start // KEYS * KEYS, key_end, KEYS):
        positions = start + tl.arange(0, KEYS)
        present = (positions >= key_start) & (positions < key_end)
        k = load_paged(k_cache, table, positions, present, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        v = load_paged(v_cache, table, positions, present, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        visible = (present[None, :] & (positions[None, :] <= query_positions[:, None])
                   & (positions[None, :] >= chunk_starts[:, None]))
        acc, row_max, row_sum = attend_tile(q_tile, k, v, visible, acc, row_max, row_sum, scale,
                                               DOT_FP32)
    release_dependents(USE_PDL)
    tl.store(out + (rows[:, None] * NUM_HEADS + head) * HEAD_DIM + dims[None, :],
             finish(acc, row_sum).to(out.dtype.element_ty), mask=is_query[:, None] & dim_ok)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, context_lens: torch.Tensor, query_start_loc: torch.Tensor,
                            scale: float, chunk_size: int, pdl: bool) -> torch.Tensor:
    """q [T, Hq, D] (sequence b's new tokens are rows query_start_loc[b]:query_start_loc[b + 1]) ->
    [T, Hq, D]; `context_lens` [B] counts each sequence's keys, new ones included."""
    total, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    q = q if q.stride(2) == 1 else q.contiguous()
    out = torch.empty((total, num_heads, head_dim), dtype=q.dtype, device=q.device)
    use_pdl = pdl_enabled(pdl, q.device)
    grid = (context_lens.shape[0], triton.cdiv(total, QUERIES_PER_TILE), num_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, context_lens, query_start_loc, scale,
        q.stride(0), q.stride(1), block_tables.stride(0),
        CHUNK=chunk_size, BLOCK_SIZE=block_size, NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim, DIM_PAD=max(MIN_DOT, triton.next_power_of_2(head_dim)), QUERIES=QUERIES_PER_TILE,
        KEYS=KEYS_PER_TILE, USE_PDL=use_pdl, DOT_FP32=dot_in_fp32(k_cache), **launch_options(use_pdl),
    )
    return out
