"""Chunked local attention masks against their definition: a query at position p sees key position j iff
j <= p and j // C == p // C."""

from __future__ import annotations

import torch

from kilotok.kernels.attention import _new_token_mask, chunked_window_mask

CHUNK = 4


def test_prefill_mask_keeps_each_query_in_its_chunk():
    prefix, new = 6, 5
    mask = _new_token_mask(new, prefix + new, "cpu", CHUNK)
    for i in range(new):
        query = prefix + i
        expected = [key <= query and key // CHUNK == query // CHUNK for key in range(prefix + new)]
        assert mask[i].tolist() == expected


def test_decode_window_mask_keeps_the_query_chunk_and_padding_rows():
    lengths = [3, 9, 4, 1]
    valid = torch.zeros(len(lengths), 10, dtype=torch.bool)
    for row, length in enumerate(lengths):
        valid[row, :length] = True
    mask = chunked_window_mask(valid, CHUNK)
    for row, length in enumerate(lengths):
        query = length - 1
        assert mask[row].tolist() == [j <= query and j // CHUNK == query // CHUNK for j in range(10)]
