"""The default model on a CUDA device with each kernel backend: seeded sampling and the paged KV cache.
Marked `gpu`: skipped without CUDA, run by scripts/gpu/test_gpu.sh on a lent GPU."""

from __future__ import annotations

import pytest

from kilotok import LLM, SamplingParams
from kilotok.bench.prompts import _LONG_PASSAGE

pytestmark = pytest.mark.gpu
ON_CUDA = {"device": "cuda", "dtype": "fp32", "compile": False, "progress": False, "kv_cache_blocks": 512}
PROMPTS = ["The three primary colours are", _LONG_PASSAGE + "\n\nWhat does the keeper want?", "def fib(n):"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


@pytest.fixture(scope="module", params=["torch", "triton"])
def llm(request) -> LLM:
    llm = LLM("smollm2-135m", backend=request.param, **ON_CUDA)
    assert llm.engine.runner.device.type == "cuda" and llm.engine.backend.value == request.param
    return llm


def test_a_seeded_request_samples_the_same_alone_again_and_in_a_batch(llm):
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=24, ignore_eos=True)
    alone = llm.generate(PROMPTS[0], seeded)[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=30), SamplingParams(temperature=0.5, seed=7, max_tokens=10)]
    batched = llm.generate(PROMPTS, [seeded, *others])[0].token_ids
    assert llm.generate(PROMPTS[0], seeded)[0].token_ids == alone == batched
    reseeded = SamplingParams(temperature=0.9, top_p=0.95, seed=4321, max_tokens=24, ignore_eos=True)
    assert llm.generate(PROMPTS[0], reseeded)[0].token_ids != alone


def test_batched_greedy_over_the_paged_cache_equals_each_prompt_alone(llm):
    alone = [llm.generate(prompt, GREEDY)[0].token_ids for prompt in PROMPTS]
    assert [out.token_ids for out in llm.generate(PROMPTS, GREEDY)] == alone
    # Again: the prompts' blocks now come from the prefix cache.
    assert [out.token_ids for out in llm.generate(PROMPTS, GREEDY)] == alone
    small_blocks = LLM("smollm2-135m", backend=llm.engine.backend.value, block_size=4, **ON_CUDA)
    assert [out.token_ids for out in small_blocks.generate(PROMPTS, GREEDY)] == alone
