"""Speculative decoding on a CUDA device with each kernel backend: greedy ids equal plain decoding's, with
n-gram drafts and with the shipped EAGLE-3 head. Marked `gpu`: run by scripts/gpu/test_gpu.sh."""

from __future__ import annotations

import pytest

from kilotok import LLM, SamplingParams
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.policy import SpecPolicy, TreeShape
from tests.speculative.test_spec_default_model import PROMPTS

pytestmark = pytest.mark.gpu
ON_CUDA = {"device": "cuda", "dtype": "fp32", "compile": False, "progress": False, "kv_cache_blocks": 512}
GREEDY = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)


@pytest.fixture(scope="module", params=["torch", "triton"])
def plain(request) -> LLM:
    return LLM("smollm2-135m", backend=request.param, **ON_CUDA)


@pytest.mark.parametrize("spec", [SpecConfig("ngram"), SpecConfig("eagle3", depth=3, topk=3, tree_size=6)],
                         ids=["ngram", "eagle3"])
def test_greedy_ids_equal_plain_decoding(plain, spec):
    fast = LLM("smollm2-135m", backend=plain.engine.backend.value, spec=spec, **ON_CUDA)
    # Draft at every batch size, whatever the shipped policy tables say about this machine.
    fast.engine.decoder.policy = SpecPolicy.fixed(TreeShape(spec.depth, spec.max_draft_nodes))
    for prompt in PROMPTS:
        assert fast.generate(prompt, GREEDY)[0].token_ids == plain.generate(prompt, GREEDY)[0].token_ids
    batched = [out.token_ids for out in fast.generate(PROMPTS, GREEDY)]
    assert batched == [out.token_ids for out in plain.generate(PROMPTS, GREEDY)]
    stats = fast.engine.spec_stats
    assert stats.target_forwards > 0 and stats.accepted_tokens > 0
