"""Chunked prefill and prefix-cache hits on the default model in fp32: the same greedy tokens and logits
as a whole, cold prefill (itself checked against transformers in test_llm_generate.py), and, in the slow
test, the same tokens as transformers' greedy generation."""

from __future__ import annotations

import os

import pytest
import torch

from kilotok import LLM, SamplingParams
from tests.tiny_engine import record_calls

SYSTEM = ("You are a careful assistant for a public library. Answer in one short paragraph, cite the "
          "shelf section when you know it, and never invent titles.")
QUESTIONS = ["Where are the atlases kept?", "Do you lend chess sets to members?"]


def _chat(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def _llm(**settings) -> LLM:
    return LLM("smollm2-135m", dtype="fp32", compile=False, progress=False, kv_cache_gb=0.1, **settings)


@pytest.fixture(scope="module")
def cold() -> LLM:
    return _llm(enable_prefix_caching=False)


@pytest.fixture(scope="module")
def cached() -> LLM:
    return _llm()


GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _run(llm: LLM, monkeypatch, prompt) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and the logits each was picked from."""
    with monkeypatch.context() as patch:
        logits = record_calls(patch, llm.engine.runner.model, "compute_logits")
        tokens = llm.generate(prompt, GREEDY)[0].token_ids
    return tokens, torch.stack([result[0] for _, _, result in logits])


def test_chunked_prefill_gives_the_same_tokens_and_logits(cold, monkeypatch):
    prompt = _chat(QUESTIONS[0])
    whole_tokens, whole_logits = _run(cold, monkeypatch, prompt)
    monkeypatch.setattr(cold.engine.scheduler, "max_num_batched_tokens", 16)
    with monkeypatch.context() as patch:
        prefills = record_calls(patch, cold.engine.runner, "prefill")
        chunked_tokens, chunked_logits = _run(cold, monkeypatch, prompt)
    assert len(prefills) > 2
    assert chunked_tokens == whole_tokens
    torch.testing.assert_close(chunked_logits, whole_logits, atol=2e-4, rtol=1e-4)


def test_a_shared_system_prompt_hits_the_prefix_cache(cold, cached, monkeypatch):
    manager = cached.engine.block_manager
    cached.generate(_chat(QUESTIONS[0]), GREEDY)
    queried, hit = manager.prefix_query_tokens, manager.prefix_hit_tokens
    hit_tokens, hit_logits = _run(cached, monkeypatch, _chat(QUESTIONS[1]))
    cold_tokens, cold_logits = _run(cold, monkeypatch, _chat(QUESTIONS[1]))
    assert hit_tokens == cold_tokens
    torch.testing.assert_close(hit_logits, cold_logits, atol=2e-4, rtol=1e-4)
    first_ids, second_ids = (cached.encode(_chat(question)) for question in QUESTIONS)
    shared = len(os.path.commonprefix([first_ids, second_ids]))
    assert shared > 2 * manager.block_size
    # Every full block of the shared leading tokens is reused.
    assert manager.prefix_hit_tokens - hit == shared // manager.block_size * manager.block_size
    assert manager.prefix_query_tokens - queried == len(second_ids)
    assert manager.num_free_blocks == manager.num_usable_blocks


@pytest.mark.slow
def test_chunks_and_prefix_hits_match_transformers(cached, monkeypatch, hf_reference_model):
    monkeypatch.setattr(cached.engine.scheduler, "max_num_batched_tokens", 16)
    prompts = [_chat(question) for question in QUESTIONS]
    outputs = cached.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    for prompt, output in zip(prompts, outputs, strict=True):
        ids = cached.encode(prompt)
        with torch.no_grad():
            expected = hf_reference_model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
        assert output.token_ids == expected[0, len(ids):].tolist()
