"""Paged decode attention: one query token per row, read straight from the block table (no gathered key
window), with grouped-query heads: a program scores the whole group of query heads sharing a KV head, so
each key and value is read once per row.

Split KV (flash decoding). A row's keys are cut into splits, one program per (row, KV head, split); each
folds its keys into an fp32 (max, sum, weighted values) triple and a second kernel merges a row's triples
in split order. Without it batch 1 of Llama-3.1-8B would run 8 programs on a GPU with over 100 SMs.
The keys a row reads (from the tile holding its first visible key to its last key) are cut every
SPLIT_KEYS keys, or into MAX_SPLITS equal runs of whole tiles where that would make more. That depends on
the row alone, never on the number of rows or on other rows' lengths, so a row decoded alone and the same
row verified in a batch split alike and come out bit for bit the same (speculative decoding compares the
two). A rule on the row count (one split once the grid is large) would break that, so short rows are
spared by length instead: a row of at most SPLIT_KEYS keys has one split, whose program writes the output
itself, and the merge kernel skips it. The grid's split axis is static, sized from the block table's width
(and the chunk), never from context_lens, so CUDA graphs replay it and nothing reads lengths on the host;
the programs past a row's splits exit at once. That axis is an upper bound no row's splits exceed, so a
wider table (another batch's longer rows) does not change how a row splits.

The same kernel verifies speculative draft trees. A tree row sees its sequence's cached prefix plus some
of the tree's keys: `tree_mask` [R, W] says which (the root, the row's ancestors and itself), where tree
key j sits at cache position prefix + j. This is what speculative/verify_inputs.py builds beside its
gathered windows; the prefix is the row's context length less its visible tree keys. The row reads its
keys as one virtual sequence of context-length keys: the prefix, then its visible tree keys in column
order, which are at depths 0, 1, ... so that virtual position prefix + k is also the k-th one's position
in the sequence. Only the cache position differs (prefix + that key's column). Tiles, splits and
chunked-local bounds are those of a plain row of the same length, so a node at depth d folds exactly the
keys, in exactly the order and the same tiles, that a plain decode row at its position would (bit for bit:
speculative decoding is lossless only so).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.kernels.triton.online_softmax import attend_tile, dot_in_fp32, finish, load_paged, merge_partial
from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer

KEYS_PER_TILE = 64
SPLIT_KEYS = 256
"""Keys per split (a multiple of KEYS_PER_TILE) up to MAX_SPLITS splits: a split's keys and values (128 KiB
at head dim 128 in bf16) outweigh its fp32 partial (2 KiB for a group of 4 heads) about 60 times."""
MAX_SPLITS = 16
"""Splits per row at most: at batch 1 and 4096 keys or more, 16 x 8 KV heads about fill an H100's 132 SMs;
it bounds the partials' workspace and the programs that exit at once for short rows."""
MIN_DOT = 16
"""Triton's dot products need every dimension to be at least 16 on a GPU: the query-head group is padded."""


@triton.jit
def _row_span(row, context_lens, CHUNK: tl.constexpr):
    """(keys, first visible key) of a row. Its query sits at position keys - 1, a tree row's too: the tree
    keys it sees (the root, the row's ancestors, itself) are one per depth, its k-th at position prefix + k."""
    context_len = tl.load(context_lens + row)
    first_key = 0
    if CHUNK > 0:
        first_key = tl.maximum((context_len - 1) // CHUNK * CHUNK, 0)
    return context_len, first_key


@triton.jit
def _tree_counts(row, tree_mask, tree_stride, TREE_WIDTH: tl.constexpr, TREE_PAD: tl.constexpr):
    """For each of the row's tree columns [TREE_PAD], how many tree keys the row sees up to it (the last:
    how many it sees in all); zeros without a tree."""
    counts = tl.zeros((TREE_PAD,), dtype=tl.int32)
    if TREE_WIDTH > 0:
        columns = tl.arange(0, TREE_PAD)
        seen = tl.load(tree_mask + row * tree_stride + columns, mask=columns < TREE_WIDTH, other=0) != 0
        counts = tl.cumsum(seen.to(tl.int32), axis=0)
    return counts


@triton.jit
def _cache_positions(positions, prefix_len, tree_counts, TREE_WIDTH: tl.constexpr):
    """Cache positions [KEYS] of a row's keys at `positions` of its virtual sequence. Past a tree row's
    prefix the k-th key is its k-th visible tree key, at prefix + its column; that column is the number of
    columns whose running count is at most k (a compare per column rather than a search)."""
    if TREE_WIDTH > 0:
        nth = positions - prefix_len
        column = tl.sum((tree_counts[None, :] <= nth[:, None]).to(tl.int32), axis=1)
        positions = tl.where(nth >= 0, prefix_len + column, positions)
    return positions


@triton.jit
def _split_plan(context_len, first_key, KEYS: tl.constexpr, SPLIT_KEYS: tl.constexpr, SPLITS: tl.constexpr):
    """(first tile's start, keys per split, splits) of a row's keys: SPLIT_KEYS keys a split, more
    where SPLITS would not hold them. A function of the row alone: for a row within its block table the
    grid's SPLITS binds only where it is MAX_SPLITS, so the row splits alike in any batch."""
    start = first_key // KEYS * KEYS
    keys = tl.maximum(context_len - start, 1)
    # Ceiling divisions spelled out: tl.cdiv is a device function, which the interpreter sets up per call.
    per_split = tl.maximum(((keys + SPLITS - 1) // SPLITS + KEYS - 1) // KEYS * KEYS, SPLIT_KEYS)
    return start, per_split, (keys + per_split - 1) // per_split


@triton.jit
def _group_tile(kv_head, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM_PAD: tl.constexpr,
                HEAD_DIM: tl.constexpr):
    """(query heads [GROUP_PAD], dims [DIM_PAD], which heads are real, which of [GROUP_PAD, DIM_PAD] are)."""
    heads = kv_head * GROUP + tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM_PAD)
    head_ok = tl.arange(0, GROUP_PAD) < GROUP
    return heads, dims, head_ok, head_ok[:, None] & (dims[None, :] < HEAD_DIM)


@triton.jit
def _attend_paged(q_tile, k_cache, v_cache, table, positions, present, kv_head, dims, acc, row_max, row_sum,
                  scale, BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                  DOT_FP32: tl.constexpr):
    """One tile of a row's keys, at cache `positions` [KEYS], folded into its running triple."""
    k = load_paged(k_cache, table, positions, present, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    v = load_paged(v_cache, table, positions, present, kv_head, dims, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    return attend_tile(q_tile, k, v, present[None, :], acc, row_max, row_sum, scale, DOT_FP32)


@triton.jit
def _store_output(out, row, heads, dims, acc, row_sum, mask, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr):
    tl.store(out + (row.to(tl.int64) * NUM_HEADS + heads[:, None]) * HEAD_DIM + dims[None, :],
             finish(acc, row_sum).to(out.dtype.element_ty), mask=mask)


@triton.jit
def _split_kernel(q, k_cache, v_cache, out, part_acc, part_max, part_sum, block_tables, context_lens, tree_mask,
                  scale, q_row_stride, q_head_stride, table_stride, tree_stride,
                  CHUNK: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                  GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM_PAD: tl.constexpr, KEYS: tl.constexpr,
                  SPLIT_KEYS: tl.constexpr, SPLITS: tl.constexpr, TREE_WIDTH: tl.constexpr,
                  TREE_PAD: tl.constexpr, USE_PDL: tl.constexpr, DOT_FP32: tl.constexpr):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    heads, dims, head_ok, mask = _group_tile(kv_head, GROUP, GROUP_PAD, DIM_PAD, HEAD_DIM)
    table = block_tables + row.to(tl.int64) * table_stride
    wait_for_producer(USE_PDL)
    context_len, first_key = _row_span(row, context_lens, CHUNK)
    start, per_split, splits = _split_plan(context_len, first_key, KEYS, SPLIT_KEYS, SPLITS)
    if split < splits:
        tree_counts = _tree_counts(row, tree_mask, tree_stride, TREE_WIDTH, TREE_PAD)
        prefix_len = context_len - tl.max(tree_counts, axis=0)
        q_tile = tl.load(q + row.to(tl.int64) * q_row_stride + heads[:, None] * q_head_stride + dims[None, :],
                         mask=mask, other=0.0)
        acc = tl.zeros((GROUP_PAD, DIM_PAD), dtype=tl.float32)
        row_max = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros((GROUP_PAD,), dtype=tl.float32)
        start += split * per_split
        end = tl.minimum(start + per_split, context_len)
        for tile in range(start, end, KEYS):
            positions = tile + tl.arange(0, KEYS)
            present = (positions < end) & (positions >= first_key)
            acc, row_max, row_sum = _attend_paged(q_tile, k_cache, v_cache, table,
                                                  _cache_positions(positions, prefix_len, tree_counts, TREE_WIDTH),
                                                  present, kv_head, dims, acc, row_max, row_sum, scale, BLOCK_SIZE,
                                                  NUM_KV_HEADS, HEAD_DIM, DOT_FP32)
        release_dependents(USE_PDL)
        if splits == 1:
            _store_output(out, row, heads, dims, acc, row_sum, mask, GROUP * NUM_KV_HEADS, HEAD_DIM)
        else:
            stats = (row.to(tl.int64) * GROUP * NUM_KV_HEADS + heads) * SPLITS + split
            tl.store(part_acc + stats[:, None] * HEAD_DIM + dims[None, :], acc, mask=mask)
            tl.store(part_max + stats, row_max, mask=head_ok)
            tl.store(part_sum + stats, row_sum, mask=head_ok)


@triton.jit
def _merge_kernel(out, part_acc, part_max, part_sum, context_lens, CHUNK: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                  HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM_PAD: tl.constexpr,
                  KEYS: tl.constexpr, SPLIT_KEYS: tl.constexpr, SPLITS: tl.constexpr, USE_PDL: tl.constexpr):
    """Each (row, KV head) of a row with several splits: its splits' partials merged in split order, a fixed
    order, so the result does not depend on how the splits' programs were scheduled."""
    row = tl.program_id(0)
    heads, dims, head_ok, mask = _group_tile(tl.program_id(1), GROUP, GROUP_PAD, DIM_PAD, HEAD_DIM)
    # Every program waits, those with nothing to merge too: the next kernel's wait for this one then covers
    # the single-split rows the split kernel wrote.
    wait_for_producer(USE_PDL)
    context_len, first_key = _row_span(row, context_lens, CHUNK)
    _, _, splits = _split_plan(context_len, first_key, KEYS, SPLIT_KEYS, SPLITS)
    if splits > 1:
        stats = (row.to(tl.int64) * GROUP * NUM_KV_HEADS + heads) * SPLITS
        acc = tl.zeros((GROUP_PAD, DIM_PAD), dtype=tl.float32)
        row_max = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros((GROUP_PAD,), dtype=tl.float32)
        for split in range(0, splits):
            acc, row_max, row_sum = merge_partial(
                acc, row_max, row_sum,
                tl.load(part_acc + (stats + split)[:, None] * HEAD_DIM + dims[None, :], mask=mask, other=0.0),
                tl.load(part_max + stats + split, mask=head_ok, other=float("-inf")),
                tl.load(part_sum + stats + split, mask=head_ok, other=0.0))
        release_dependents(USE_PDL)
        _store_output(out, row, heads, dims, acc, row_sum, mask, GROUP * NUM_KV_HEADS, HEAD_DIM)


def split_slots(table_keys: int, chunk_size: int) -> int:
    """The grid's split axis: the most splits any row can need, from static shapes (a row reads at most its
    table's keys, or under a chunked mask its chunk plus the part of a tile before it)."""
    most_keys = min(table_keys, chunk_size + KEYS_PER_TILE - 1) if chunk_size else table_keys
    return max(1, min(MAX_SPLITS, triton.cdiv(most_keys, SPLIT_KEYS)))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, tree_mask: torch.Tensor | None,
                           scale: float, chunk_size: int, pdl: bool) -> torch.Tensor:
    """q [R, Hq, D] -> [R, Hq, D]; caches [blocks, block_size, Hkv, D] (contiguous); one sequence per row
    (`block_tables` [R, max_blocks], `context_lens` [R]: keys row r sees). With a tree, `tree_mask` (bool)
    [R, W] as in the module's docstring."""
    rows, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    q = q if q.stride(2) == 1 else q.contiguous()
    out = torch.empty((rows, num_heads, head_dim), dtype=q.dtype, device=q.device)
    splits = split_slots(block_tables.shape[1] * block_size, chunk_size)
    # Partials only where some row can split; a single-split row's program writes `out` itself.
    part_acc = torch.empty((rows, num_heads, splits, head_dim) if splits > 1 else 0, dtype=torch.float32,
                           device=q.device)
    part_max, part_sum = (torch.empty(part_acc.shape[:-1], dtype=torch.float32, device=q.device) for _ in range(2))
    tree_width = 0 if tree_mask is None else tree_mask.shape[1]
    if tree_mask is None:
        tree_mask = context_lens  # never read: TREE_WIDTH 0 compiles the tree part away
    use_pdl = pdl_enabled(pdl, q.device)
    constants = dict(CHUNK=chunk_size, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, GROUP=group,
                     GROUP_PAD=max(MIN_DOT, triton.next_power_of_2(group)),
                     DIM_PAD=max(MIN_DOT, triton.next_power_of_2(head_dim)), KEYS=KEYS_PER_TILE,
                     SPLIT_KEYS=SPLIT_KEYS, SPLITS=splits, USE_PDL=use_pdl)
    _split_kernel[(rows, num_kv_heads, splits)](
        q, k_cache, v_cache, out, part_acc, part_max, part_sum, block_tables, context_lens, tree_mask, scale,
        q.stride(0), q.stride(1), block_tables.stride(0), tree_mask.stride(0), BLOCK_SIZE=block_size,
        TREE_WIDTH=tree_width, TREE_PAD=triton.next_power_of_2(max(tree_width, 1)), DOT_FP32=dot_in_fp32(k_cache),
        **constants, **launch_options(use_pdl))
    if splits > 1:
        _merge_kernel[(rows, num_kv_heads)](out, part_acc, part_max, part_sum, context_lens, **constants,
                                            **launch_options(use_pdl))
    return out
