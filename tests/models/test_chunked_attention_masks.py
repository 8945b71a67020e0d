"""Chunked local attention masks against their definition: a query at position p sees key position j iff
j <= p (or j is an ancestor, in a draft tree) and j // C == p // C."""

from __future__ import annotations

import torch

from kilotok.kernels.attention import _new_token_mask, chunked_window_mask

CHUNK = 4


def test_prefill_mask_keeps_each_query_in_its_chunk():
    prefix, new = 6, 5
    mask = _new_token_mask(new, prefix + new, None, "cpu", CHUNK)
    for i in range(new):
        query = prefix + i
        expected = [key <= query and key // CHUNK == query // CHUNK for key in range(prefix + new)]
        assert mask[i].tolist() == expected


def test_tree_mask_uses_node_depth_as_position():
    prefix = 7
    # Root (depth 0) with children 1 and 2 (depth 1); node 3 under node 1 (depth 2).
    tree = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    mask = _new_token_mask(4, prefix + 4, tree, "cpu", CHUNK)
    depths = [0, 1, 1, 2]
    key_positions = list(range(prefix)) + [prefix + d for d in depths]
    for node, depth in enumerate(depths):
        query = prefix + depth
        visible = [True] * prefix + tree[node].tolist()
        expected = [v and p // CHUNK == query // CHUNK for v, p in zip(visible, key_positions, strict=True)]
        assert mask[node].tolist() == expected


def test_decode_window_mask_keeps_the_query_chunk_and_padding_rows():
    lengths = [3, 9, 4, 1]
    valid = torch.zeros(len(lengths), 10, dtype=torch.bool)
    for row, length in enumerate(lengths):
        valid[row, :length] = True
    mask = chunked_window_mask(valid, CHUNK)
    for row, length in enumerate(lengths):
        query = length - 1
        assert mask[row].tolist() == [j <= query and j // CHUNK == query // CHUNK for j in range(10)]
