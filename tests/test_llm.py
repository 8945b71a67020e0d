"""The whole engine on the default model in fp32, against transformers' greedy generation."""

from __future__ import annotations

import pytest
import torch

from kilotok import LLM, SamplingParams
from kilotok.errors import InvalidRequestError

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Name a colour."}],
    "def fibonacci(n):",
]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM("smollm2-135m", dtype="fp32", compile=False, progress=False, kv_cache_gb=0.25)


def _greedy(max_tokens: int, **extra) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **extra)


@pytest.mark.slow
def test_greedy_batch_matches_transformers(llm, hf_reference_model):
    outputs = llm.generate(PROMPTS, _greedy(24))
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        prompt_ids = llm.encode(prompt)
        assert output.prompt_token_ids == prompt_ids
        with torch.no_grad():
            expected = hf_reference_model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False
            )[0, len(prompt_ids):].tolist()
        assert output.token_ids == expected
        assert output.finish_reason == ("stop" if expected[-1] in llm.tokenizer.eos_token_ids else "length")
        assert output.text == llm.tokenizer.decode(expected)


def test_batched_equals_one_at_a_time(llm):
    together = llm.generate(PROMPTS, _greedy(12))
    alone = [llm.generate(p, _greedy(12))[0] for p in PROMPTS]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]


def test_preemption_under_a_tiny_cache_keeps_outputs(llm):
    small = LLM("smollm2-135m", dtype="fp32", compile=False, progress=False, kv_cache_blocks=12, block_size=8,
                max_num_batched_tokens=16)
    prompts = [f"Tell me a fact about the number {n}." for n in range(4)]
    params = _greedy(20, ignore_eos=True)
    squeezed = small.generate(prompts, params)
    assert [o.token_ids for o in squeezed] == [o.token_ids for o in llm.generate(prompts, params)]
    assert small.engine.block_manager.num_free_blocks == small.engine.block_manager.num_usable_blocks


def test_seed_makes_sampling_reproducible(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=1234, ignore_eos=True)
    first = llm.generate(PROMPTS[0], params)[0].token_ids
    in_batch = llm.generate([PROMPTS[1], PROMPTS[0]], [SamplingParams(max_tokens=5), params])[1].token_ids
    assert first == in_batch
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=99, ignore_eos=True)
    assert llm.generate(PROMPTS[0], other_seed)[0].token_ids != first


def test_stop_string_truncates_text(llm):
    reference = llm.generate(PROMPTS[2], _greedy(32, ignore_eos=True))[0]
    stop = reference.text[8:12]
    output = llm.generate(PROMPTS[2], _greedy(32, ignore_eos=True, stop=[stop]))[0]
    assert output.finish_reason == "stop"
    assert output.text == reference.text[: reference.text.index(stop)]
    kept = llm.generate(PROMPTS[2], _greedy(32, ignore_eos=True, stop=[stop], include_stop_str_in_output=True))[0]
    assert kept.text == reference.text[: reference.text.index(stop) + len(stop)]


def test_eos_and_stop_token_ids_finish(llm):
    output = llm.generate(PROMPTS[0], _greedy(200))[0]
    assert output.finish_reason == "stop"
    assert output.token_ids[-1] in llm.tokenizer.eos_token_ids
    first = output.token_ids[0]
    stopped = llm.generate(PROMPTS[0], _greedy(200, stop_token_ids=[output.token_ids[1]]))[0]
    assert stopped.token_ids == [first, output.token_ids[1]]


def test_streaming_deltas_add_up_to_the_text(llm):
    updates = list(llm.stream(PROMPTS[1], _greedy(20)))
    assert updates[-1].finished
    assert "".join(u.delta_text for u in updates) == updates[-1].text
    assert updates[-1].ttft_s > 0


def test_bad_requests_raise_clear_errors(llm):
    with pytest.raises(InvalidRequestError, match="maximum context length"):
        llm.generate({"prompt_token_ids": [1] * 9000}, _greedy(4))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate({"prompt_token_ids": [10**6]}, _greedy(4))
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate({"prompt_token_ids": []}, _greedy(4))
    with pytest.raises(InvalidRequestError, match="temperature"):
        SamplingParams(temperature=-1)
    assert not llm.engine.has_unfinished()
