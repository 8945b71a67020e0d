"""Greedy speculative output equals plain greedy output in the default configuration: the default model
in its default int4 weights, with the compiled decode step. Verification runs the compiled decode graph
of its row count, and the graphs round each row identically whatever the batch (see model_runner.py)."""

from __future__ import annotations

import pytest

from kilotok import LLM, SamplingParams
from kilotok.bench.prompts import bench_prompts
from kilotok.speculative.config import SpecConfig

PARAMS = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts_and_plain_outputs():
    prompts = bench_prompts(4)
    plain = LLM("smollm2-135m", progress=False)
    return prompts, [o.token_ids for o in plain.generate(prompts, PARAMS)] + [
        plain.generate(prompts[0], PARAMS)[0].token_ids
    ]


@pytest.mark.slow
@pytest.mark.parametrize("spec", [SpecConfig("eagle3", depth=5, topk=2, tree_size=8), SpecConfig("ngram", depth=4)],
                         ids=["eagle3", "ngram"])
def test_compiled_int4_speculation_is_token_identical(prompts_and_plain_outputs, spec):
    prompts, plain = prompts_and_plain_outputs
    speculative = LLM("smollm2-135m", progress=False, spec=spec)
    alone = [speculative.generate(p, PARAMS)[0] for p in prompts]
    batched = speculative.generate(prompts, PARAMS)
    # Four prompts decoded together and one alone, against each alone and all four together.
    assert [o.token_ids for o in batched] == plain[:4]
    assert [o.token_ids for o in alone] == plain[:4]
    assert alone[0].token_ids == plain[4]
    assert not speculative.engine.runner._compile_failed
    assert not speculative.engine.decoder.verify_steps.calls.failed
    # Verification ran its compiled graphs (the trees fill their size: the head's always, a whole chain).
    assert all(step._replays for step in speculative.engine.decoder.verify_steps.calls.compiled.values())
    if spec.method == "eagle3":
        assert sum(o.accepted_tokens for o in alone) > 0, "the shipped head should get drafts accepted"
