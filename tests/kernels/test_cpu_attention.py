"""The C++ decode-attention op against attention computed in float64 from its definition (softmax of the
scaled scores over each row's visible keys, times their values), on random caches and windows whose
visible keys are ragged, scattered (draft-tree rows) and padded; and a row's result bit for bit the same
whatever else is in the batch and however long its window is."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels import cpu_attention

pytestmark = pytest.mark.skipif(not cpu_attention.cpu_attention_available(),
                                reason="needs AVX-512 and a C++ compiler")

BLOCKS, BLOCK_SIZE = 12, 16


def caches(kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (BLOCKS, BLOCK_SIZE, kv_heads, head_dim)
    return tuple(torch.randn(shape, generator=generator).to(dtype) for _ in range(2))


def random_windows(rows: int, window: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct random slots per row, about half of them visible, at least one."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(BLOCKS * BLOCK_SIZE, generator=generator)[:window] for _ in range(rows)])
    valid = torch.rand(rows, window, generator=generator) < 0.5
    valid[:, 0] = True
    return index, valid


def attention_by_definition(q, k_cache, v_cache, index, valid, scale):
    heads, head_dim = q.shape[1:]
    kv_heads = k_cache.shape[2]
    keys = k_cache.double().view(-1, kv_heads, head_dim)
    values = v_cache.double().view(-1, kv_heads, head_dim)
    out = torch.empty(q.shape, dtype=torch.float64)
    for row in range(q.shape[0]):
        slots = index[row][valid[row]]
        for head in range(heads):
            kv_head = head // (heads // kv_heads)
            scores = keys[slots, kv_head] @ q[row, head].double() * scale
            out[row, head] = scores.softmax(dim=0) @ values[slots, kv_head]
    return out


@pytest.mark.parametrize(("rows", "heads", "kv_heads", "head_dim", "window"),
                         [(1, 9, 3, 64, 64), (5, 9, 3, 64, 128), (33, 8, 8, 48, 64), (7, 4, 1, 128, 192)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_attention_by_definition(rows, heads, kv_heads, head_dim, window, dtype):
    k_cache, v_cache = caches(kv_heads, head_dim, dtype, seed=rows)
    index, valid = random_windows(rows, window, seed=heads)
    q = torch.randn(rows, heads, head_dim)
    scale = head_dim**-0.5
    out = cpu_attention.cpu_decode_attention(q, k_cache, v_cache, index, valid, scale)
    expected = attention_by_definition(q, k_cache, v_cache, index, valid, scale)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_row_is_the_same_alone_and_in_a_padded_batch():
    k_cache, v_cache = caches(3, 64, torch.float32, seed=1)
    index, valid = random_windows(6, 192, seed=2)
    q = torch.randn(6, 9, 64)
    batch = cpu_attention.cpu_decode_attention(q, k_cache, v_cache, index, valid, 0.125)
    for row in range(6):
        visible = index[row][valid[row]]
        alone_index = torch.zeros(1, 128, dtype=torch.int64)
        alone_index[0, : len(visible)] = visible
        alone_valid = torch.arange(128)[None] < len(visible)
        alone = cpu_attention.cpu_decode_attention(q[row : row + 1], k_cache, v_cache, alone_index, alone_valid,
                                                   0.125)
        assert torch.equal(alone[0], batch[row])


def test_bf16_queries_come_back_in_bf16_and_a_row_seeing_nothing_is_zero():
    k_cache, v_cache = caches(3, 64, torch.bfloat16, seed=3)
    index, valid = random_windows(2, 64, seed=4)
    valid[1] = False
    out = cpu_attention.cpu_decode_attention(torch.randn(2, 9, 64).bfloat16(), k_cache, v_cache, index, valid, 0.125)
    assert out.dtype == torch.bfloat16 and not out[0].eq(0).all() and out[1].eq(0).all()


def test_a_compiled_graph_keeps_the_op():
    k_cache, v_cache = caches(3, 64, torch.float32, seed=5)
    index, valid = random_windows(4, 64, seed=6)
    q = torch.randn(4, 9, 64)

    def step(q, index, valid):
        return cpu_attention.cpu_decode_attention(q * 2, k_cache, v_cache, index, valid, 0.125) + 1

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, index, valid), step(q, index, valid))


def test_mismatched_caches_are_refused():
    k_cache, v_cache = caches(3, 64, torch.float32, seed=7)
    index, valid = random_windows(1, 64, seed=8)
    with pytest.raises(RuntimeError, match="head_dim"):
        cpu_attention.cpu_decode_attention(torch.randn(1, 9, 32), k_cache, v_cache, index, valid, 0.125)
