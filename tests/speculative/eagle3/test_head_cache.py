"""The head's cache rows: each commit lands after its row's committed columns, rows are reused once
released, and growing the buffers (in rows or columns) keeps every row's data where it was."""

from __future__ import annotations

import torch

from kilotok.speculative.eagle3.head_cache import HeadCache
from kilotok.speculative.eagle3.model import Eagle3Output


def _output(batch: int, width: int, seed: int) -> Eagle3Output:
    generator = torch.Generator().manual_seed(seed)
    return Eagle3Output(*(torch.randn(batch, width, *shape, generator=generator) for shape in ((6,), (10,), (2, 3),
                                                                                                  (2, 3))))


def _commit(cache: HeadCache, row_ids: list[int], counts: list[int], width: int, seed: int) -> Eagle3Output:
    out = _output(len(row_ids), width, seed)
    slots = torch.tensor(cache.slots(row_ids, width)).flatten()
    positions = torch.arange(width).repeat(len(row_ids), 1) + 100 * torch.tensor(row_ids)[:, None]
    last = torch.arange(len(row_ids)) * width + torch.tensor(counts) - 1
    cache.commit(cache.index(row_ids, torch.device("cpu")), row_ids, counts, out, slots, last, positions)
    return out


def test_commits_append_after_each_row_and_keep_the_last_real_output():
    cache = HeadCache(rows=2, columns=4)
    a, b = cache.acquire(), cache.acquire()
    first = _commit(cache, [a, b], [3, 1], width=4, seed=1)
    second = _commit(cache, [b], [2], width=2, seed=2)
    assert cache.committed[a] == 3 and cache.committed[b] == 3
    # Growing to 1 + 2 padded columns past b's first input fitted; a's padding column stays past its count.
    torch.testing.assert_close(cache.k[a, :3], first.k[0, :3], rtol=0, atol=0)
    torch.testing.assert_close(cache.k[b, :3], torch.cat((first.k[1, :1], second.k[0])), rtol=0, atol=0)
    torch.testing.assert_close(cache.v[b, 1:3], second.v[0], rtol=0, atol=0)
    torch.testing.assert_close(cache.logits[a], first.logits[0, 2], rtol=0, atol=0)
    torch.testing.assert_close(cache.hidden[b], second.hidden[0, 1], rtol=0, atol=0)
    assert cache.last_position.tolist() == [2, 101]
    # Rows out of order are gathered by an index, consecutive ones sliced.
    assert isinstance(cache.index([b, a], torch.device("cpu")), torch.Tensor)
    assert cache.index([a, b], torch.device("cpu")) == slice(0, 2)
    window = cache.window(cache.index([b, a], torch.device("cpu")), 3)
    torch.testing.assert_close(window[0], torch.stack((cache.k[b, :3], cache.k[a, :3])), rtol=0, atol=0)


def test_growing_keeps_rows_and_released_rows_are_reused_empty():
    cache = HeadCache(rows=1, columns=2)
    a = cache.acquire()
    out = _commit(cache, [a], [2], width=2, seed=3)
    b = cache.acquire()  # no free row: the buffers double in rows
    _commit(cache, [b], [1], width=8, seed=4)  # 8 columns: they grow too
    assert cache.k.shape[:2] == (2, 8) and cache.logits.shape == (2, 10)
    torch.testing.assert_close(cache.k[a, :2], out.k[0], rtol=0, atol=0)
    torch.testing.assert_close(cache.logits[a], out.logits[0, 1], rtol=0, atol=0)
    cache.release(a)
    assert cache.acquire() == a and cache.committed[a] == 0
    assert cache.window(slice(a, a + 1), 0) is None
