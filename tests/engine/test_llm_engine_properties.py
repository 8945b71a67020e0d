"""The whole engine under generated operation sequences: hypothesis adds, steps and aborts greedy requests
on the small random Llama with a KV cache small enough to preempt, plainly and with n-gram speculation.
The books balance after every operation, every request that was not aborted ends with transformers'
greedy continuation of its prompt (an aborted one with a prefix of it), and the cache ends idle."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kilotok.errors import InvalidRequestError
from kilotok.sequence import Sequence
from tests.engine.books import check_blocks, check_idle
from tests.tiny_engine import greedy, greedy_with_logits, tiny_llm

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_TOKENS = 12
MAX_DRAIN_STEPS = 1_000

# Repeated stems over three tokens: prompts share cached blocks, and n-gram drafts find matches.
prompts = st.lists(st.integers(0, 2), min_size=1, max_size=5).map(lambda stem: stem * 2)
# Each operation: add (a prompt, max_tokens), step, or abort (the number picks the request).
operations = st.lists(st.tuples(st.sampled_from(["add", "add", "step", "step", "step", "abort"]), prompts,
                                st.integers(1, MAX_TOKENS)), min_size=8, max_size=40)
engines = st.fixed_dictionaries({
    "kv_cache_blocks": st.integers(6, 12), "max_num_batched_tokens": st.integers(1, 16),
    "max_num_seqs": st.integers(1, 4), "spec": st.sampled_from([None, "ngram"]),
})


@cache
def _greedy(reference, prompt: tuple[int, ...]) -> list[int]:
    return greedy_with_logits(reference, list(prompt), MAX_TOKENS)[0]


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setup=engines, ops=operations)
def test_engine_books_and_outputs(reference, setup, ops):
    with pytest.MonkeyPatch.context() as patch:
        engine = tiny_llm(patch, reference, block_size=4, check_tensors=True, **setup).engine
    seqs: list[Sequence] = []
    aborted: set[int] = set()
    for kind, prompt, number in ops:
        if kind == "add":
            try:
                seqs.append(engine.add_request(prompt, greedy(number)))
            except InvalidRequestError:
                # Refused only when the request could not fit the whole cache even alone.
                capacity = engine.block_manager.num_usable_blocks * engine.block_manager.block_size
                assert len(prompt) + number + engine.scheduler.lookahead_slots > capacity
        elif kind == "step":
            engine.step()
        elif unfinished := [seq for seq in seqs if not seq.is_finished]:
            seq = unfinished[number % len(unfinished)]
            engine.abort(seq)
            aborted.add(seq.seq_id)
        check_blocks(engine.block_manager, engine.scheduler, seqs)
    for _ in range(MAX_DRAIN_STEPS):
        if not engine.has_unfinished():
            break
        engine.step()
        check_blocks(engine.block_manager, engine.scheduler, seqs)
    assert not engine.has_unfinished()
    for seq in seqs:
        want = _greedy(reference, tuple(seq.prompt_token_ids))[: seq.params.max_tokens]
        if seq.seq_id in aborted:
            assert seq.finish_reason == "abort" and want[: seq.num_output_tokens] == seq.output_token_ids
        else:
            assert seq.finish_reason == "length" and seq.output_token_ids == want
    check_idle(engine.block_manager)
    assert 0 <= engine.block_manager.prefix_hit_tokens <= engine.block_manager.prefix_query_tokens
