"""The default model (9 query heads, 3 KV heads, int4 GGUF weights dequantized to fp32) at tensor
parallel 3, ranks spawned over gloo: greedy output equals one process's, token for token."""

from __future__ import annotations

import pytest

from kilotok.llm import LLM
from kilotok.sampling_params import SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
PARAMS = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _greedy(**settings) -> list[list[int]]:
    with LLM("smollm2-135m", dtype="fp32", compile=False, progress=False, **settings) as llm:
        return [list(output.token_ids) for output in llm.generate(PROMPTS, PARAMS)]


@pytest.mark.slow
def test_tensor_parallel_3_equals_one_process_on_the_default_model():
    assert _greedy(tensor_parallel_size=3) == _greedy()
