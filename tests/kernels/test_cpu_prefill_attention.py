"""The C++ prefill-attention op against attention computed in float64 from its definition (each new token
of a sequence sees the cached prefix and the new tokens up to its own position, within its chunk of
positions for chunked local attention), on ragged batches over scattered blocks, prompts that continue a
cached prefix, lengths that are not multiples of the op's tiles or vector width, and grouped heads; and a
token's result bit for bit the same however its prompt was split into chunks and whatever else is in
the batch."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels import cpu_attention
from kilotok.kernels.attention import paged_attention
from kilotok.kernels.attention_metadata import AttentionMetadata

pytestmark = pytest.mark.skipif(not cpu_attention.cpu_attention_available(),
                                reason="needs AVX-512 and a C++ compiler")

BLOCKS, BLOCK_SIZE, MAX_BLOCKS = 64, 16, 24


def caches(kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (BLOCKS, BLOCK_SIZE, kv_heads, head_dim)
    return tuple(torch.randn(shape, generator=generator).to(dtype) for _ in range(2))


def batch(contexts: list[int], new_tokens: list[int], seed: int):
    """Block tables of distinct scattered blocks, context lengths and query starts for sequences with
    `contexts[b]` cached tokens of which the last `new_tokens[b]` are this step's."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randperm(BLOCKS, generator=generator)
    tables = torch.zeros(len(contexts), MAX_BLOCKS, dtype=torch.int32)
    used = 0
    for b, context in enumerate(contexts):
        count = -(-context // BLOCK_SIZE)
        tables[b, :count] = blocks[used : used + count]
        used += count
    starts = torch.tensor([0, *torch.tensor(new_tokens).cumsum(0).tolist()], dtype=torch.int32)
    return tables, torch.tensor(contexts, dtype=torch.int32), starts


def attention_by_definition(q, k_cache, v_cache, tables, contexts, starts, scale, chunk):
    heads, head_dim = q.shape[1:]
    kv_heads = k_cache.shape[2]
    out = torch.empty(q.shape, dtype=torch.float64)
    for b, context in enumerate(contexts.tolist()):
        first, last = starts[b].item(), starts[b + 1].item()
        positions = torch.arange(context)
        slots = tables[b, positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE
        keys = k_cache.double().view(-1, kv_heads, head_dim)[slots]
        values = v_cache.double().view(-1, kv_heads, head_dim)[slots]
        for row in range(first, last):
            position = context - (last - row)
            visible = (positions <= position) & (positions >= (position // chunk * chunk if chunk else 0))
            for head in range(heads):
                kv_head = head // (heads // kv_heads)
                scores = keys[visible, kv_head] @ q[row, head].double() * scale
                out[row, head] = scores.softmax(dim=0) @ values[visible, kv_head]
    return out


@pytest.mark.parametrize(("contexts", "new_tokens", "heads", "kv_heads", "head_dim", "chunk"), [
    ([1], [1], 9, 3, 64, 0),
    ([37, 80, 5], [37, 80, 5], 9, 3, 64, 0),       # whole prompts, ragged
    ([150, 21], [13, 21], 8, 2, 128, 0),           # the first continues a 137-token cached prefix
    ([70, 33], [70, 9], 4, 4, 48, 0),              # head_dim not a multiple of 16, no grouping
    ([100, 45], [60, 45], 8, 1, 200, 16),          # chunked local attention; head_dim over 128
    ([300], [300], 6, 2, 64, 0),                   # keys beyond one tile of scores
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_attention_by_definition(contexts, new_tokens, heads, kv_heads, head_dim, chunk, dtype):
    k_cache, v_cache = caches(kv_heads, head_dim, dtype, seed=heads)
    tables, lens, starts = batch(contexts, new_tokens, seed=head_dim)
    q = torch.randn(sum(new_tokens), heads, head_dim)
    scale = head_dim**-0.5
    out = cpu_attention.cpu_prefill_attention(q, k_cache, v_cache, tables, lens, starts, scale, chunk)
    expected = attention_by_definition(q, k_cache, v_cache, tables, lens, starts, scale, chunk)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_scores_far_below_zero_and_far_apart_still_match():
    """Scores spread over tens, then every score near -480 (keys about +1, queries about -60). A float32
    score near -480 carries about 1e-4 of rounding that the softmax passes on, hence the tolerance;
    what this guards against is the maximum or the sum going wrong (NaN, or weights from the wrong keys)."""
    generator = torch.Generator().manual_seed(11)
    tables, lens, starts = batch([40, 17], [40, 17], seed=10)
    shape = (BLOCKS, BLOCK_SIZE, 3, 64)
    k_cache = 1 + 0.05 * torch.randn(shape, generator=generator)
    v_cache = torch.randn(shape, generator=generator)
    for q in (torch.randn(57, 9, 64, generator=generator) * 20,
              -60 * (1 + 0.05 * torch.randn(57, 9, 64, generator=generator))):
        out = cpu_attention.cpu_prefill_attention(q, k_cache, v_cache, tables, lens, starts, 0.125)
        expected = attention_by_definition(q, k_cache, v_cache, tables, lens, starts, 0.125, 0)
        torch.testing.assert_close(out.double(), expected, rtol=2e-3, atol=2e-3)


def test_a_token_is_the_same_however_its_prompt_was_chunked_and_batched():
    k_cache, v_cache = caches(3, 64, torch.float32, seed=1)
    tables, lens, starts = batch([90, 40], [90, 40], seed=2)
    q = torch.randn(130, 9, 64)
    whole = cpu_attention.cpu_prefill_attention(q, k_cache, v_cache, tables, lens, starts, 0.125)
    # The first prompt in chunks of 23, 50 and 17 tokens, alone.
    done = 0
    for size in (23, 50, 17):
        part = cpu_attention.cpu_prefill_attention(
            q[done : done + size], k_cache, v_cache, tables[:1], torch.tensor([done + size], dtype=torch.int32),
            torch.tensor([0, size], dtype=torch.int32), 0.125)
        assert torch.equal(part, whole[done : done + size])
        done += size


def test_paged_attention_runs_the_op_for_prompts_when_asked():
    k_cache, v_cache = caches(3, 64, torch.float32, seed=3)
    tables, lens, starts = batch([20, 11], [20, 4], seed=4)
    meta = AttentionMetadata(slot_mapping=torch.zeros(24, dtype=torch.int64), block_tables=tables, context_lens=lens,
                             query_start_loc=starts)
    q = torch.randn(24, 9, 64)
    op = paged_attention(q, k_cache, v_cache, meta, 0.125, cpu_kernel=True)
    reference = paged_attention(q, k_cache, v_cache, meta, 0.125)
    assert torch.equal(op, cpu_attention.cpu_prefill_attention(q, k_cache, v_cache, tables, lens, starts, 0.125))
    torch.testing.assert_close(op, reference, rtol=1e-4, atol=1e-5)


def test_a_compiled_graph_keeps_the_op():
    k_cache, v_cache = caches(3, 64, torch.float32, seed=5)
    tables, lens, starts = batch([12, 7], [12, 7], seed=6)
    q = torch.randn(19, 9, 64)

    def step(q):
        return cpu_attention.cpu_prefill_attention(q * 2, k_cache, v_cache, tables, lens, starts, 0.125) + 1

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q), step(q))


def test_bad_metadata_is_refused():
    k_cache, v_cache = caches(3, 64, torch.float32, seed=7)
    tables, lens, starts = batch([10], [10], seed=8)
    with pytest.raises(RuntimeError, match="query_start_loc"):
        cpu_attention.cpu_prefill_attention(torch.randn(9, 9, 64), k_cache, v_cache, tables, lens, starts, 0.125)
    with pytest.raises(RuntimeError, match="context length"):
        cpu_attention.cpu_prefill_attention(torch.randn(10, 9, 64), k_cache, v_cache, tables,
                                            torch.tensor([5], dtype=torch.int32), starts, 0.125)
