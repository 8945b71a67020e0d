"""The torch.compile'd decode step must produce what the eager step produces."""

from __future__ import annotations

import pytest
import torch

from kilotok import LLM, SamplingParams

PROMPTS = [
    [{"role": "user", "content": "List three uses of copper."}],
    "In 1969, the first humans",
    "x = [i * i for i in range(10)]\nprint(",
]
KV_CACHE_GB = 0.05


def _eager(dtype: str) -> LLM:
    return LLM("smollm2-135m", dtype=dtype, compile=False, progress=False, kv_cache_gb=KV_CACHE_GB)


@pytest.fixture(scope="module")
def eager_fp32() -> LLM:
    """Loaded once for the tests that only generate with it or read its cache's layout."""
    return _eager("fp32")


def test_compiled_greedy_decode_equals_eager(eager_fp32):
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    compiled = LLM("smollm2-135m", dtype="fp32", compile=True, progress=False, kv_cache_gb=KV_CACHE_GB)
    # Three prompts decode as a padded batch of 4, then one prompt alone (padded to 2): two graphs.
    expected = [o.token_ids for o in eager_fp32.generate(PROMPTS, params)]
    assert [o.token_ids for o in compiled.generate(PROMPTS, params)] == expected
    assert compiled.generate(PROMPTS[1], params)[0].token_ids == expected[1]
    assert not compiled.engine.runner._compile_failed


def test_precompiled_buckets_serve_the_real_steps_without_recompiling():
    import torch._dynamo.utils

    llm = LLM("smollm2-135m", dtype="fp32", compile=True, progress=False, kv_cache_gb=0.1)
    llm.engine.runner.compile_buckets(range(1, 3))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    llm.generate(PROMPTS[:2], params)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_the_kv_cache_is_allocated_in_the_formats_kv_dtype_and_sized_by_it(eager_fp32):
    blocks = {}
    for llm, kv_dtype in ((_eager("int4"), torch.bfloat16), (eager_fp32, torch.float32)):
        runner = llm.engine.runner
        caches = [c for layer in runner.model.layers for c in (layer.self_attn.k_cache, layer.self_attn.v_cache)]
        assert {cache.dtype for cache in caches} == {kv_dtype}
        blocks[kv_dtype] = caches[0].shape[0]
    # The same memory holds twice the blocks in bf16.
    assert abs(blocks[torch.bfloat16] - 2 * blocks[torch.float32]) <= 1
