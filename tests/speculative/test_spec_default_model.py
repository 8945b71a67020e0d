"""Speculative decoding on the default model in fp32: greedy output identical to plain decoding."""

from __future__ import annotations

import pytest
import torch

from kilotok import LLM, SamplingParams
from kilotok.speculative.config import SpecConfig

PROMPTS = [
    [{"role": "user", "content": "List the days of the week, then list them again in reverse order."}],
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):",
    [{"role": "user", "content": "Write two sentences about the sea."}],
]
SETTINGS = {"dtype": "fp32", "compile": False, "progress": False, "kv_cache_gb": 0.1}
PARAMS = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def plain() -> LLM:
    return LLM("smollm2-135m", **SETTINGS)


@pytest.fixture(scope="module")
def plain_outputs(plain: LLM) -> list:
    """Plain decoding of each prompt alone, once for every method: greedy output is deterministic, so
    decoding it again per method would only repeat the same work."""
    return [plain.generate(prompt, PARAMS)[0] for prompt in PROMPTS]


def _random_head(plain: LLM, folder):
    from kilotok.speculative.eagle3.checkpoint import save_eagle3
    from kilotok.speculative.eagle3.config import Eagle3Config
    from kilotok.speculative.eagle3.model import Eagle3DraftModel

    torch.manual_seed(0)
    embedding = plain.engine.runner.model.embed_tokens.weight
    head = Eagle3DraftModel(Eagle3Config.for_target(plain.engine.model_config, 2048), embedding)
    return save_eagle3(head, folder)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ngram", "eagle3"])
def test_greedy_output_is_identical_to_plain_decoding(plain, plain_outputs, method, tmp_path):
    spec = SpecConfig(method)
    if method == "eagle3":
        spec = SpecConfig(method, draft=str(_random_head(plain, tmp_path)), depth=3, topk=3, tree_size=6)
    fast = LLM("smollm2-135m", spec=spec, **SETTINGS)
    for prompt, want in zip(PROMPTS, plain_outputs, strict=True):
        got = fast.generate(prompt, PARAMS)[0]
        assert got.token_ids == want.token_ids
        assert got.text == want.text
    assert fast.engine.spec_stats.target_forwards > 0
