"""Paged decode attention: one query token per row, read straight from the block table (no gathered key
window), with grouped-query heads: one program per (row, KV head) scores the whole group of query heads
sharing that KV head, so each key and value is read once per row.

The same kernel verifies speculative draft trees. A tree row sees its sequence's cached prefix plus some
of the tree's keys: `tree_mask` [R, W] says which (the root, the row's ancestors and itself), where tree
key j sits at cache position prefix + j, and `tree_positions` [R, W] gives each tree key's position in
the sequence (the root's plus its depth), which chunked-local layers compare chunks by. This is what
speculative/verify_inputs.py builds beside its gathered windows; the prefix is the row's context length
less its visible tree keys.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.kernels.triton.online_softmax import attend_tile, dot_in_fp32, finish, load_paged
from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer

KEYS_PER_TILE = 64
MIN_DOT = 16
"""Triton's dot products need every dimension to be at least 16 on a GPU: the query-head group is padded."""


@triton.jit
def _decode_kernel(q, k_cache, v_cache, out, block_tables, context_lens, tree_mask, tree_positions, scale,
                   q_row_stride, q_head_stride, table_stride, tree_stride,
                   CHUNK: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                   HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM_PAD: tl.constexpr,
                   KEYS: tl.constexpr, TREE_WIDTH: tl.constexpr, TREE_PAD: tl.constexpr, USE_PDL: tl.constexpr,
                   DOT_FP32: tl.constexpr):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    heads = kv_head * GROUP + tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM_PAD)
    head_ok = tl.arange(0, GROUP_PAD) < GROUP
    table = block_tables + row.to(tl.int64) * table_stride
    wait_for_producer(USE_PDL)
    q_tile = tl.load(q + row.to(tl.int64) * q_row_stride + heads[:, None] * q_head_stride + dims[None, :],
                     mask=head_ok[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    context_len = tl.load(context_lens + row)
    if TREE_WIDTH > 0:
        tree_keys = tl.arange(0, TREE_PAD)
        in_tree = tree_keys < TREE_WIDTH
        seen = tl.load(tree_mask + row * tree_stride + tree_keys, mask=in_tree, other=0) != 0
        node_positions = tl.load(tree_positions + row * tree_stride + tree_keys, mask=in_tree, other=0)
        prefix_len = context_len - tl.sum(seen.to(tl.int32), axis=0)
        query_position = tl.max(tl.where(seen, node_positions, prefix_len - 1), axis=0)
    else:
        prefix_len = context_len
        query_position = context_len - 1
    first_key = 0
    if CHUNK > 0:
        first_key = query_position // CHUNK * CHUNK
    acc = tl.zeros((GROUP_PAD, DIM_PAD), dtype=tl.float32)
    row_max = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((GROUP_PAD,), dtype=tl.float32)
    for start in range(first_key // KEYS * KEYS, prefix_len, KEYS):
        positions = start + tl.arange(0, KEYS)
        present = (positions < prefix_len) & (positions >= first_key)
        k = load_paged(k_cache, table, positions, present, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        v = load_paged(v_cache, table, positions, present, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        acc, row_max, row_sum = attend_tile(q_tile, k, v, present[None, :], acc, row_max, row_sum, scale,
                                               DOT_FP32)
    if TREE_WIDTH > 0:
        visible = seen & (node_positions >= first_key)
        positions = prefix_len + tree_keys
        k = load_paged(k_cache, table, positions, visible, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        v = load_paged(v_cache, table, positions, visible, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        acc, row_max, row_sum = attend_tile(q_tile, k, v, visible[None, :], acc, row_max, row_sum, scale,
                                               DOT_FP32)
    release_dependents(USE_PDL)
    tl.store(out + (row.to(tl.int64) * GROUP * NUM_KV_HEADS + heads[:, None]) * HEAD_DIM + dims[None, :],
             finish(acc, row_sum).to(out.dtype.element_ty), mask=head_ok[:, None] & (dims[None, :] < HEAD_DIM))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, tree_mask: torch.Tensor | None,
                           tree_positions: torch.Tensor | None, scale: float, chunk_size: int,
                           pdl: bool) -> torch.Tensor:
    """q [R, Hq, D] -> [R, Hq, D]; caches [blocks, block_size, Hkv, D] (contiguous); one sequence per row
    (`block_tables` [R, max_blocks], `context_lens` [R]: keys row r sees). With a tree, `tree_mask` (bool)
    and `tree_positions` (int) [R, W] as in the module's docstring."""
    rows, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    q = q if q.stride(2) == 1 else q.contiguous()
    out = torch.empty((rows, num_heads, head_dim), dtype=q.dtype, device=q.device)
    tree_width = 0 if tree_mask is None else tree_mask.shape[1]
    if tree_mask is None:
        tree_mask = tree_positions = context_lens  # never read: TREE_WIDTH 0 compiles the tree part away
    use_pdl = pdl_enabled(pdl, q.device)
    _decode_kernel[(rows, num_kv_heads)](
        q, k_cache, v_cache, out, block_tables, context_lens, tree_mask, tree_positions, scale,
        q.stride(0), q.stride(1), block_tables.stride(0), tree_mask.stride(0),
        CHUNK=chunk_size, BLOCK_SIZE=block_size, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, GROUP=group,
        GROUP_PAD=max(MIN_DOT, triton.next_power_of_2(group)), DIM_PAD=max(MIN_DOT, triton.next_power_of_2(head_dim)),
        KEYS=KEYS_PER_TILE, TREE_WIDTH=tree_width, TREE_PAD=max(MIN_DOT, triton.next_power_of_2(tree_width)),
        USE_PDL=use_pdl, DOT_FP32=dot_in_fp32(k_cache), **launch_options(use_pdl),
    )
    return out
