"""The inner step every attention kernel here shares: one tile of keys and values folded into a running
(max, sum, weighted values) triple, flash-attention style, so a query's scores never need to fit at once.

Rows with nothing visible yet keep max -inf; the step measures against 0 instead so that no -inf - -inf
turns into NaN, and such rows keep weight 0 (the kernels then write zeros for them)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.kernels.backend import interpreting


def dot_in_fp32(cache: torch.Tensor) -> bool:
    """Whether the dot products take fp32 inputs: for fp32 caches, and always under the interpreter, whose
    bf16 dot products are wrong (Triton 3.9: it multiplies the raw bits); else they take the cache's dtype
    (bf16 tensor cores) and accumulate in fp32, with the softmax weights rounded to it, as flash attention
    does."""
    return cache.dtype == torch.float32 or interpreting()


@triton.jit
def attend_tile(q, k, v, visible, acc, row_max, row_sum, scale, DOT_FP32: tl.constexpr):
    """q [M, D], k and v [N, D], visible [M, N] (or broadcastable); acc [M, D], row_max and row_sum [M],
    all fp32 state. Scores and weighted sums run as fp32-accumulating dot products."""
    if DOT_FP32:
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    else:
        q = q.to(k.dtype)
    scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
    safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
    weights = tl.exp(scores - safe_max[:, None])
    rescale = tl.exp(row_max - safe_max)
    row_sum = row_sum * rescale + tl.sum(weights, axis=1)
    acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision="ieee")
    return acc, new_max, row_sum


@triton.jit
def merge_partial(acc, row_max, row_sum, part_acc, part_max, part_sum):
    """Fold a partial triple over other keys (another program's tiles, as `attend_tile` left it) into the
    running one: the same rescaling, so merging split-KV partials in order gives the softmax over all of
    them."""
    new_max = tl.maximum(row_max, part_max)
    safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
    rescale = tl.exp(row_max - safe_max)
    part_rescale = tl.exp(part_max - safe_max)
    acc = acc * rescale[:, None] + part_acc * part_rescale[:, None]
    return acc, new_max, row_sum * rescale + part_sum * part_rescale


@triton.jit
def finish(acc, row_sum):
    """The attention output of the folded tiles; rows that saw no key come out as zeros."""
    return acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]


@triton.jit
def load_paged(cache, block_tables_row, positions, present, kv_head, dims, BLOCK_SIZE: tl.constexpr,
               NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Rows [N, D] of a paged cache [blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM] at token `positions` of
    one sequence (its block table row), straight through the block table; absent rows read as 0."""
    blocks = tl.load(block_tables_row + positions // BLOCK_SIZE, mask=present, other=0).to(tl.int64)
    slots = blocks * BLOCK_SIZE + positions % BLOCK_SIZE
    offsets = (slots[:, None] * NUM_KV_HEADS + kv_head) * HEAD_DIM + dims[None, :]
    return tl.load(cache + offsets, mask=present[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
