"""Continuous batching with chunked prefill, the prefix cache and preemption, on a small random Llama:
every output is checked against transformers' greedy continuation of the same prompt."""

from __future__ import annotations

import math

import pytest
import torch

from kilotok.errors import InvalidRequestError
from tests.tiny_engine import greedy, greedy_with_logits, random_prompt, random_reference, record_calls, tiny_llm

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 32


@pytest.fixture(scope="module")
def reference():
    return random_reference(vocab=VOCAB, seed=3)




def _assert_idle(llm) -> None:
    manager = llm.engine.block_manager
    assert manager.num_free_blocks == manager.num_usable_blocks
    assert not any(manager.ref_counts)
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize("budget", [1, 7])
def test_chunked_prefill_matches_transformers(monkeypatch, reference, budget):
    llm = tiny_llm(monkeypatch, reference, max_num_batched_tokens=budget, enable_prefix_caching=False)
    prompts = [random_prompt(length, seed=length, vocab=VOCAB) for length in (5, 23, 41)]
    prefills = record_calls(monkeypatch, llm.engine.runner, "prefill")
    logits = record_calls(monkeypatch, llm.engine.runner.model, "compute_logits")
    first = llm.generate({"prompt_token_ids": prompts[2]}, greedy(6))[0]
    want_tokens, want_logits = greedy_with_logits(reference, prompts[2], 6)
    assert first.token_ids == want_tokens
    torch.testing.assert_close(logits[0][2][0], want_logits, atol=1e-4, rtol=1e-4)
    # The prompt really ran in chunks no larger than the budget (a last chunk of one token is a decode).
    assert len(prefills) >= math.ceil(41 / budget) - 1
    assert all(sum(kwargs.get("num_new_tokens") or args[1]) <= budget for args, kwargs, _ in prefills)
    together = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(8))
    assert [o.token_ids for o in together] == [greedy_with_logits(reference, p, 8)[0] for p in prompts]
    _assert_idle(llm)


def test_decoding_continues_while_a_long_prompt_prefills(monkeypatch, reference):
    budget = 8
    llm = tiny_llm(monkeypatch, reference, max_num_batched_tokens=budget)
    engine = llm.engine
    short, long = random_prompt(3, seed=1, vocab=VOCAB), random_prompt(40, seed=2, vocab=VOCAB)
    first = engine.add_request(short, greedy(30))
    for _ in range(2):
        engine.step()
    decodes = record_calls(monkeypatch, engine.runner, "decode")
    prefills = record_calls(monkeypatch, engine.runner, "prefill")
    second = engine.add_request(long, greedy(5))
    steps = 0
    while second.num_output_tokens == 0:
        updated = [seq for seq, _ in engine.step()]
        assert first in updated
        steps += 1
    # Each step holds the short request's next token and a chunk of the rest of the budget.
    assert steps == math.ceil(len(long) / (budget - 1))
    # The short request decodes through the decode path while the long prompt's chunks go through prefill.
    assert [call[0][0] for call in decodes] == [[first]] * steps
    assert [call[0][0] for call in prefills] == [[second]] * steps
    while engine.has_unfinished():
        engine.step()
    assert any(call[0][0] == [first, second] for call in decodes)
    assert first.output_token_ids == greedy_with_logits(reference, short, 30)[0]
    assert second.output_token_ids == greedy_with_logits(reference, long, 5)[0]
    _assert_idle(llm)


def test_a_prefix_cache_hit_gives_the_cold_output(monkeypatch, reference):
    llm = tiny_llm(monkeypatch, reference)
    manager = llm.engine.block_manager
    system = random_prompt(21, seed=5, vocab=VOCAB)
    first, second = system + [1, 2], system + [3, 4, 5]
    llm.generate({"prompt_token_ids": first}, greedy(4))
    queried, hit = manager.prefix_query_tokens, manager.prefix_hit_tokens
    prefills = record_calls(monkeypatch, llm.engine.runner, "prefill")
    logits = record_calls(monkeypatch, llm.engine.runner.model, "compute_logits")
    output = llm.generate({"prompt_token_ids": second}, greedy(8))[0]
    want_tokens, want_logits = greedy_with_logits(reference, second, 8)
    assert output.token_ids == want_tokens
    torch.testing.assert_close(logits[0][2][0], want_logits, atol=1e-4, rtol=1e-4)
    # The five full blocks of the shared 21 tokens came from the cache; only the rest was computed.
    assert manager.prefix_query_tokens - queried == len(second)
    assert manager.prefix_hit_tokens - hit == 20
    assert [args[1] for args, _, _ in prefills] == [[len(second) - 20]]
    _assert_idle(llm)


def test_abort_frees_the_blocks_at_once(monkeypatch, reference):
    llm = tiny_llm(monkeypatch, reference, max_num_batched_tokens=8)
    engine = llm.engine
    seq = engine.add_request(random_prompt(30, seed=7, vocab=VOCAB), greedy(50))
    for _ in range(5):
        engine.step()
    assert seq.block_table and seq.num_output_tokens > 0
    engine.abort(seq)
    assert seq.finish_reason == "abort"
    _assert_idle(llm)
    # Its full blocks stay in the prefix cache, unreferenced, until the space is needed.
    assert engine.block_manager.prefix_cache.num_evictable >= 30 // 4


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_preemption_under_a_tiny_cache_completes_every_request(monkeypatch, reference, prefix_caching):
    llm = tiny_llm(monkeypatch, reference, kv_cache_blocks=12, max_num_batched_tokens=6,
                   enable_prefix_caching=prefix_caching)
    shared = random_prompt(9, seed=11, vocab=VOCAB)
    prompts = [shared[: 4 + n] + random_prompt(2 + 2 * n, seed=20 + n, vocab=VOCAB) for n in range(6)]
    preemptions = record_calls(monkeypatch, llm.engine.scheduler, "preempt")
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(16))
    assert preemptions
    assert [o.token_ids for o in outputs] == [greedy_with_logits(reference, p, 16)[0] for p in prompts]
    _assert_idle(llm)


def test_a_request_larger_than_the_cache_is_rejected(monkeypatch, reference):
    llm = tiny_llm(monkeypatch, reference, kv_cache_blocks=12)  # 11 usable blocks of 4: 44 slots
    prompt = random_prompt(20, seed=13, vocab=VOCAB)
    with pytest.raises(InvalidRequestError, match="whole cache holds 44"):
        llm.engine.add_request(prompt, greedy(25))
    assert not llm.engine.has_unfinished()
    assert llm.generate({"prompt_token_ids": prompt}, greedy(24))[0].token_ids == \
        greedy_with_logits(reference, prompt, 24)[0]
    _assert_idle(llm)
