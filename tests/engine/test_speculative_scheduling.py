"""Scheduling with speculative decoding on the small random Llama: prompts prefilled in chunks hand the
EAGLE-3 drafter the same features as one whole prefill, and outputs stay transformers' greedy ones."""

from __future__ import annotations

import pytest
import torch

from kilotok.speculative.config import SpecConfig
from tests.tiny_engine import (
    greedy,
    greedy_with_logits,
    random_head_folder,
    random_prompt,
    random_reference,
    record_calls,
    tiny_llm,
)

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 32


@pytest.fixture(scope="module")
def reference():
    return random_reference(vocab=VOCAB, seed=4)


def test_chunked_prefill_starts_eagle3_drafts_from_every_prompt_position(monkeypatch, reference, tmp_path):
    spec = SpecConfig("eagle3", draft=str(random_head_folder(reference, tmp_path)), depth=3, topk=2, tree_size=5)
    prompts = [random_prompt(length, seed=length, vocab=VOCAB) for length in (12, 30)]
    runs = {}
    for budget in (4096, 5):
        llm = tiny_llm(monkeypatch, reference, spec=spec, max_num_batched_tokens=budget)
        chunks = record_calls(monkeypatch, llm.engine.decoder.drafter, "prefilled")
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(10))
        assert [o.token_ids for o in outputs] == [greedy_with_logits(reference, p, 10)[0] for p in prompts]
        features = {}
        for (seq, start, chunk_features, next_token), _, _ in chunks:
            key = tuple(seq.prompt_token_ids)
            assert start == sum(len(f) for f in features.get(key, []))
            features.setdefault(key, []).append(chunk_features)
            # Only the chunk that completes the prompt brings the token sampled after it.
            assert (next_token is not None) == (start + len(chunk_features) == len(key))
        features = {key: torch.cat(parts) for key, parts in features.items()}
        assert len(features) == len(prompts)
        runs[budget] = (features, llm.engine.spec_stats)
    (whole, whole_stats), (chunked, chunked_stats) = runs[4096], runs[5]
    for prompt in prompts:
        # One feature row for every prompt position, as the drafter contract says.
        assert chunked[tuple(prompt)].shape[0] == len(prompt)
        torch.testing.assert_close(chunked[tuple(prompt)], whole[tuple(prompt)], atol=1e-5, rtol=1e-5)
    assert (chunked_stats.drafted_tokens, chunked_stats.accepted_tokens) == \
        (whole_stats.drafted_tokens, whole_stats.accepted_tokens)


def test_ngram_speculation_with_chunks_and_prefix_hits_keeps_greedy_output(monkeypatch, reference):
    llm = tiny_llm(monkeypatch, reference, spec=SpecConfig("ngram", depth=4), max_num_batched_tokens=6,
                   kv_cache_blocks=24)
    pattern = random_prompt(5, seed=9, vocab=VOCAB)
    prompts = [pattern * 4 + random_prompt(n, seed=n, vocab=VOCAB) for n in (1, 2, 3, 4)]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(12))
    assert [o.token_ids for o in outputs] == [greedy_with_logits(reference, p, 12)[0] for p in prompts]
    manager = llm.engine.block_manager
    assert manager.prefix_hit_tokens > 0
    assert manager.num_free_blocks == manager.num_usable_blocks and not any(manager.ref_counts)


def test_eagle3_drafts_after_prefix_cache_hits_and_keeps_greedy_output(monkeypatch, reference, tmp_path):
    """Cached prompt blocks come without the target's features: the head starts after them (a gap it
    skips), drafts from there, and the output stays the target's greedy one."""
    spec = SpecConfig("eagle3", draft=str(random_head_folder(reference, tmp_path)), depth=3, topk=2, tree_size=5)
    llm = tiny_llm(monkeypatch, reference, spec=spec, kv_cache_blocks=64)
    chunks = record_calls(monkeypatch, llm.engine.decoder.drafter, "prefilled")
    shared = random_prompt(13, seed=5, vocab=VOCAB)
    prompts = [shared + random_prompt(n, seed=20 + n, vocab=VOCAB) for n in (1, 3, 6)]
    outputs = [llm.generate({"prompt_token_ids": p}, greedy(16))[0] for p in prompts]
    assert [o.token_ids for o in outputs] == [greedy_with_logits(reference, p, 16)[0] for p in prompts]
    # Three full blocks of 4 came from the cache for the second and third prompts.
    assert [args[1] for args, _, _ in chunks] == [0, 12, 12]
    assert all(o.drafted_tokens > 0 for o in outputs)
