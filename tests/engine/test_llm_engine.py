"""The engine's request edge on the small random Llama: what `new_request` builds and refuses."""

from __future__ import annotations

import pytest
import torch

from kilotok import SamplingParams
from kilotok.engine.llm_engine import CONTEXT_LENGTH_EXCEEDED
from kilotok.errors import InvalidRequestError, ModelFormatError
from kilotok.layers.sampler import Sampler, SamplingTensors
from kilotok.speculative.tree import DraftTree
from kilotok.speculative.verify import accept_sampled, read_verdicts
from tests.speculative.tree_rows import tree_rows
from tests.tiny_engine import random_reference, tiny_llm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_seeded_request_gets_its_generator_on_the_runners_device(monkeypatch, reference):
    engine = tiny_llm(monkeypatch, reference).engine
    seq = engine.new_request([1, 2, 3], SamplingParams(seed=5))
    assert seq.generator is not None and seq.generator.device == engine.runner.device
    assert seq.generator.initial_seed() == 5
    assert engine.new_request([1, 2, 3], SamplingParams()).generator is None


def test_new_request_refuses_what_the_engine_cannot_serve(monkeypatch, reference):
    engine = tiny_llm(monkeypatch, reference, max_model_len=16, kv_cache_blocks=8).engine
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.new_request([], SamplingParams())
    with pytest.raises(InvalidRequestError, match="maximum context length is 16") as caught:
        engine.new_request([1] * 16, SamplingParams())
    assert caught.value.code == CONTEXT_LENGTH_EXCEEDED
    with pytest.raises(InvalidRequestError, match=r"outside the vocabulary"):
        engine.new_request([1, 99], SamplingParams())
    # 7 usable blocks of 4 slots hold 28 tokens; this one could never finish, even alone.
    small = tiny_llm(monkeypatch, reference, kv_cache_blocks=8)
    with pytest.raises(InvalidRequestError, match="whole cache holds 28"):
        small.engine.new_request([1] * 10, SamplingParams(max_tokens=40))
    assert not engine.has_unfinished() and not small.engine.has_unfinished()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seeded_sampling_and_acceptance_run_on_a_cuda_generator():
    from kilotok.layers.sampler import make_generator

    logits = torch.randn(2, 50, device="cuda")
    sampling = SamplingTensors.from_params([SamplingParams(temperature=0.8)] * 2, "cuda")
    draws = [Sampler()(logits, sampling, [make_generator(7, "cuda"), None]) for _ in range(2)]
    assert draws[0][0] == draws[1][0]
    probs = logits.softmax(dim=-1)
    trees = tree_rows([DraftTree.chain([3, 4])], 3, "cuda")
    verdicts = [read_verdicts(accept_sampled(trees, probs[None, :1].expand(1, 3, -1),
                                             [make_generator(11, "cuda")]).summary()) for _ in range(2)]
    assert verdicts[0] == verdicts[1]


def test_check_tensors_reaches_the_loader(monkeypatch):
    damaged = random_reference(seed=1)
    with torch.no_grad():
        damaged.model.layers[1].mlp.up_proj.weight[2, 3] = float("inf")
    tiny_llm(monkeypatch, damaged)  # loads: nothing checks by default
    with pytest.raises(ModelFormatError, match=r"model\.layers\.1\.mlp\.up_proj\.weight: NaN or infinite values: 1, "
                                               r"the first at \(2, 3\)"):
        tiny_llm(monkeypatch, damaged, check_tensors=True)
