"""`--backend triton` end to end, under the interpreter: the engine with the Triton attention kernels gives
the greedy tokens of the torch backend (the reference) on a small random Llama with chunked prefill,
batching and speculative draft trees, and on the default model."""

from __future__ import annotations

import pytest

from kilotok.kernels.backend import KernelBackend
from kilotok.models import builder
from kilotok.models.registry import load_checkpoint
from kilotok.speculative.config import SpecConfig
from tests.tiny_engine import (
    VOCAB,
    RandomTreeDrafter,
    greedy,
    mixed_prompts,
    random_reference,
    tiny_llm,
    use_drafter,
)


def test_tiny_llama_with_chunked_prefill_and_draft_trees_matches_the_torch_backend(monkeypatch):
    reference = random_reference()
    prompts = mixed_prompts(4, seed=3)  # 1 to 4 tokens; 13 would need chunks, the interpreter is slow
    prompts.append({"prompt_token_ids": list(range(VOCAB - 1)) * 2})  # 14 tokens: two prefill chunks
    params = greedy(5)
    settings = {"max_num_batched_tokens": 8, "max_model_len": 40, "spec": SpecConfig("ngram", depth=3)}
    expected = tiny_llm(monkeypatch, reference, backend="torch", **settings).generate(prompts, params)
    llm = tiny_llm(monkeypatch, reference, backend="triton", **settings)
    assert llm.engine.backend is KernelBackend.TRITON
    use_drafter(llm, RandomTreeDrafter(VOCAB, max_nodes=4, seed=0))
    got = llm.generate(prompts, params)
    assert [out.token_ids for out in got] == [out.token_ids for out in expected]
    assert llm.engine.spec_stats.drafted_tokens > llm.engine.spec_stats.accepted_tokens > 0


@pytest.mark.slow
def test_default_model_greedy_tokens_match_the_torch_backend(monkeypatch):
    from kilotok import LLM

    checkpoint = load_checkpoint("smollm2-135m", progress=False)
    monkeypatch.setattr(builder, "load_checkpoint", lambda name, progress: checkpoint)
    outputs = {}
    for backend in ("torch", "triton"):
        llm = LLM("smollm2-135m", dtype="fp32", compile=False, progress=False, backend=backend, kv_cache_gb=0.05)
        outputs[backend] = llm.generate("The capital of France is", greedy(4))[0].token_ids
    assert outputs["triton"] == outputs["torch"]
