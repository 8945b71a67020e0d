"""The Triton attention kernels against the PyTorch reference behind the same entry points, on random
caches whose blocks are scattered over the cache, with ragged context lengths, block sizes and head
dimensions that are not multiples of the kernels' tiles, grouped-query heads, and chunked-local masks."""

from __future__ import annotations

import random

import pytest
import torch

from kilotok.kernels.attention import paged_attention, store_kv
from kilotok.kernels.backend import KernelBackend
from kilotok.runner.step_inputs import decode_key_window, token_rows
from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from kilotok.speculative.tree import DraftTree, DraftTrees
from kilotok.speculative.verify_inputs import build_verify_inputs

TRITON = KernelBackend.TRITON
TORCH = KernelBackend.TORCH
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
"""Where the bit-identity tests run: here under the interpreter; on a lent GPU compiled, where contraction
into fused multiply-adds could differ between kernels built for different grids."""


def random_cache(num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(num_blocks * 31 + block_size)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return (torch.randn(shape, generator=generator).to(dtype), torch.randn(shape, generator=generator).to(dtype))


def sequences(lengths: list[int], block_size: int, num_blocks: int, cached: list[int] | None = None):
    """Sequences of the given lengths over blocks drawn at random from 1..num_blocks-1 (block 0 is padding)."""
    free = list(range(1, num_blocks))
    random.Random(sum(lengths)).shuffle(free)
    seqs = []
    for index, length in enumerate(lengths):
        seq = Sequence(list(range(length)), SamplingParams())
        seq.block_table = [free.pop() for _ in range(-(-length // block_size))]
        seq.num_cached_tokens = cached[index] if cached else length - 1
        seqs.append(seq)
    return seqs


def both_backends(q, caches, meta, scale, chunk=0):
    expected = paged_attention(q, *caches, meta, scale, chunk, TORCH)
    got = paged_attention(q, *caches, meta, scale, chunk, TRITON, pdl=True)
    return got, expected


@pytest.mark.parametrize(("lengths", "block_size", "heads", "kv_heads", "head_dim", "chunk"), [
    ([1, 17, 70, 5], 16, 9, 3, 64, 0),  # the default model's heads; 70 keys span two 64-key tiles
    ([130, 3], 5, 4, 4, 24, 0),  # a block size and head dimension that match no tile, no grouping
    ([40, 9, 77], 8, 6, 2, 32, 16),  # chunked-local: the query sees only its own chunk of 16
    # Split KV, 256 keys a split: one key, one split, 2 splits (256 + 44 keys), 4 (3 x 256 + 9).
    ([1, 64, 300, 777], 16, 8, 2, 32, 0),
    # Past 16 splits of 256 the splits grow: 4500 keys in 14 x 320 + 20.
    ([4500, 3], 64, 2, 1, 16, 0),
    # Chunks of 600: 1100 keys split 3 ways from the tile before its chunk start; 650 keys one split.
    ([1100, 37, 650], 16, 4, 2, 32, 600),
])
def test_paged_decode_matches_the_reference(lengths, block_size, heads, kv_heads, head_dim, chunk):
    num_blocks = sum(-(-n // block_size) for n in lengths) + 3
    caches = random_cache(num_blocks, block_size, kv_heads, head_dim)
    seqs = sequences(lengths, block_size, num_blocks)
    padded = len(seqs) + 2  # padding rows, as in a decode bucket
    inputs = token_rows(seqs, lengths, padded, block_size, max(len(s.block_table) for s in seqs), torch.device("cpu"))
    meta = inputs.meta
    meta.kv_gather_index, meta.kv_valid = decode_key_window(seqs, padded, block_size, torch.device("cpu"))
    q = torch.randn(padded, heads, head_dim, generator=torch.Generator().manual_seed(3))
    got, expected = both_backends(q, caches, meta, head_dim**-0.5, chunk)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [0, 1024])
def test_paged_decode_rows_do_not_depend_on_their_batch(chunk, device):
    """A row decoded alone and inside a batch of other rows, whose longer tables widen the grid's split axis,
    comes out bit for bit the same (speculative decoding compares the two); a row with no key reads zeros."""
    from kilotok.kernels.triton.attention_decode import paged_decode_attention

    block_size, kv_heads, heads, head_dim, lengths = 16, 2, 4, 32, [777, 40, 0, 1100]
    caches = random_cache(sum(-(-n // block_size) for n in lengths) + 1, block_size, kv_heads, head_dim)
    seqs = sequences(lengths, block_size, caches[0].shape[0])
    q = torch.randn(len(lengths), heads, head_dim, generator=torch.Generator().manual_seed(8)).to(device)
    caches = [cache.to(device) for cache in caches]

    def decode(rows: list[int]) -> torch.Tensor:
        tables = torch.zeros(len(rows), max(len(seqs[r].block_table) for r in rows), dtype=torch.int32)
        for index, row in enumerate(rows):
            tables[index, : len(seqs[row].block_table)] = torch.tensor(seqs[row].block_table, dtype=torch.int32)
        context_lens = torch.tensor([lengths[r] for r in rows], dtype=torch.int32)
        return paged_decode_attention(q[rows], *caches, tables.to(device), context_lens.to(device), None,
                                      head_dim**-0.5, chunk, pdl=True)

    batch = decode([0, 1, 2, 3])
    assert torch.equal(decode([0]), batch[0:1]) and torch.equal(decode([1]), batch[1:2])
    assert not batch[2].any() and batch[[0, 1, 3]].abs().sum(dim=-1).gt(0).all()


def test_paged_decode_in_bf16_caches():
    lengths, block_size, head_dim = [33, 600], 16, 64  # one split, three
    caches = random_cache(45, block_size, 2, head_dim, torch.bfloat16)
    seqs = sequences(lengths, block_size, 45)
    inputs = token_rows(seqs, lengths, 2, block_size, 38, torch.device("cpu"))
    inputs.meta.kv_gather_index, inputs.meta.kv_valid = decode_key_window(seqs, 2, block_size, torch.device("cpu"))
    q = torch.randn(2, 8, head_dim, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    got, expected = both_backends(q, caches, inputs.meta, head_dim**-0.5)
    # The kernel rounds the softmax weights to bf16 for the value product, as flash attention does.
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)


TREES = [DraftTree([5, 6, 7, 8, 9], [-1, 0, 0, 1, 3]), DraftTree.chain([4, 4, 4]), DraftTree([], [])]


@pytest.mark.parametrize(("lengths", "chunk"), [
    ([23, 7, 14], 0), ([23, 7, 14], 8),
    ([300, 7, 14], 0),  # 2 splits, the tree keys (positions 299 on) in the second
    # Chunks of 300 after a prefix of 597: shallow nodes read from key 256 (masked up to 300) in 2 splits,
    # the second holding their tree keys; nodes from depth 3 sit in the next chunk and see only tree keys.
    ([598, 7, 14], 300),
])
def test_tree_verification_rows_match_their_gathered_windows(lengths, chunk):
    """The rows speculative verification builds (speculative/verify_inputs.py): the reference reads each
    row's gathered window, the kernel the block table, the tree mask and the nodes' positions."""
    block_size, kv_heads, heads, head_dim = 4, 2, 6, 40
    width = 1 + max(len(tree) for tree in TREES)
    num_blocks = sum(-(-(n + width) // block_size) for n in lengths) + 3
    seqs = sequences([n + width - 1 for n in lengths], block_size, num_blocks)
    for seq, length in zip(seqs, lengths, strict=True):
        seq.token_ids = seq.token_ids[:length]  # blocks reserved for the tree's lookahead slots
    caches = random_cache(num_blocks, block_size, kv_heads, head_dim)
    padded = len(seqs) * width + 3
    meta = build_verify_inputs(seqs, DraftTrees.from_trees(TREES), width, padded, block_size,
                               max(len(seq.block_table) for seq in seqs), torch.device("cpu")).meta
    q = torch.randn(padded, heads, head_dim, generator=torch.Generator().manual_seed(5))
    got, expected = both_backends(q, caches, meta, head_dim**-0.5, chunk)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def plain_copies(caches, meta, block_size: int):
    """(k and v caches, block tables, context lengths) of one plain sequence per verification row: the row's prefix,
    then the tree keys it sees, copied to contiguous positions of blocks of its own."""
    rows, width = meta.tree_mask.shape
    blocks = -(-int(meta.context_lens.max()) // block_size)
    tables = 1 + torch.arange(rows * blocks, dtype=torch.int32).view(rows, blocks)
    plain = [torch.zeros((rows * blocks + 1, *cache.shape[1:]), dtype=cache.dtype) for cache in caches]
    for row, (length, seen) in enumerate(zip(meta.context_lens.tolist(), meta.tree_mask, strict=True)):
        prefix = length - int(seen.sum())
        positions = torch.cat([torch.arange(prefix), prefix + seen.nonzero().flatten()])
        slots = meta.block_tables[row, positions // block_size].long() * block_size + positions % block_size
        plain_slots = tables[row, : -(-length // block_size)].long()[:, None] * block_size + torch.arange(block_size)
        for source, copy in zip(caches, plain, strict=True):
            copy.flatten(0, 1)[plain_slots.flatten()[:length]] = source.flatten(0, 1)[slots]
    return (*plain, tables, meta.context_lens)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [0, 64])
def test_tree_rows_fold_as_plain_decode_rows(chunk, device):
    """A verification row computes bit for bit what a plain decode row at its node's position computes over
    the same keys (speculative decoding is lossless only so), where the node's path crosses a 64-key tile
    (prefix 62), a 256-key split (prefix 254) and, with chunks of 64, a chunk; on a branching tree whose
    rows' paths skip columns, ragged prefixes and trees, padding rows and columns."""
    from kilotok.kernels.triton.attention_decode import paged_decode_attention

    block_size, kv_heads, heads, head_dim = 8, 2, 4, 16
    trees = [TREES[0], DraftTree([3, 1, 4, 1, 5], [-1, -1, 1, 0, 2]), TREES[1]]
    width = 1 + max(len(tree) for tree in trees)
    lengths = [63, 255, 6]  # each sequence's prefix is one less: its last token is the tree's root
    num_blocks = sum(-(-(n + width) // block_size) for n in lengths) + 3
    seqs = sequences([n + width - 1 for n in lengths], block_size, num_blocks)
    for seq, length in zip(seqs, lengths, strict=True):
        seq.token_ids = seq.token_ids[:length]
    caches = random_cache(num_blocks, block_size, kv_heads, head_dim)
    padded = len(seqs) * width + 2
    meta = build_verify_inputs(seqs, DraftTrees.from_trees(trees), width, padded, block_size,
                               max(len(s.block_table) for s in seqs), torch.device("cpu"), key_windows=False).meta
    q = torch.randn(padded, heads, head_dim, generator=torch.Generator().manual_seed(9))
    scale = head_dim**-0.5
    tree_inputs = (q, *caches, meta.block_tables, meta.context_lens, meta.tree_mask)
    got = paged_decode_attention(*(t.to(device) for t in tree_inputs), scale, chunk, pdl=True)
    plain_inputs = (q, *plain_copies(caches, meta, block_size))
    expected = paged_decode_attention(*(t.to(device) for t in plain_inputs), None, scale, chunk, pdl=True)
    assert torch.equal(got, expected) and got.abs().sum(dim=-1).gt(0).all()


@pytest.mark.parametrize(("cached", "new", "block_size", "chunk"), [
    ([0, 0], [21, 3], 16, 0),  # whole prompts, one longer than a query tile
    ([13, 30, 0], [5, 19, 1], 6, 0),  # chunked prefill: new tokens after cached ones
    ([11, 0], [26, 37], 8, 12),  # chunked-local attention across several chunks
])
def test_paged_prefill_matches_the_reference(cached, new, block_size, chunk):
    heads, kv_heads, head_dim = 6, 3, 48
    lengths = [c + n for c, n in zip(cached, new, strict=True)]
    num_blocks = sum(-(-n // block_size) for n in lengths) + 2
    caches = random_cache(num_blocks, block_size, kv_heads, head_dim)
    seqs = sequences(lengths, block_size, num_blocks, cached)
    inputs = token_rows(seqs, lengths, len(seqs), block_size, max(len(s.block_table) for s in seqs),
                        torch.device("cpu"))
    q = torch.randn(sum(new), heads, head_dim, generator=torch.Generator().manual_seed(6))
    got, expected = both_backends(q, caches, inputs.meta, head_dim**-0.5, chunk)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_store_kv_writes_each_token_at_its_slot():
    k_caches = random_cache(6, 5, 3, 20)
    v_caches = [c.clone() for c in k_caches]
    generator = torch.Generator().manual_seed(7)
    # K and V as the attention layer has them: views into a fused projection, rows strided.
    fused = torch.randn(7, 2 * 3 * 20 + 11, generator=generator)
    k = fused[:, : 60].reshape(7, 3, 20)
    v = fused[:, 60:120].reshape(7, 3, 20)
    slots = torch.tensor([5, 6, 29, 11, 0, 17, 23])
    store_kv(k, v, *k_caches, slots, TORCH)
    store_kv(k, v, *v_caches, slots, TRITON, pdl=True)
    assert torch.equal(v_caches[0], k_caches[0]) and torch.equal(v_caches[1], k_caches[1])
