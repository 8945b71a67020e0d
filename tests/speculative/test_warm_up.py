"""`LLMEngine.warm_up` builds every compiled graph that later steps run, plain and speculative, so that no
request waits on the compiler: after it, requests at every batch size, with drafting and without, the batch
shrinking as they finish, compile nothing; and the warm-up leaves nothing behind (outputs stay the
reference's greedy ones, the drafter holds no row, every KV block is free)."""

from __future__ import annotations

import pytest
import torch._dynamo.utils

from kilotok.speculative.config import SpecConfig
from kilotok.speculative.policy import SpecPolicy, TreeShape
from tests.tiny_engine import greedy, greedy_with_logits, random_head_folder, random_prompt, random_reference, tiny_llm

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 32


@pytest.fixture(scope="module")
def reference():
    return random_reference(vocab=VOCAB, seed=4)


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("method", ["eagle3", "ngram"])
def test_after_warm_up_requests_compile_nothing(monkeypatch, reference, tmp_path, method):
    if method == "eagle3":
        spec = SpecConfig("eagle3", draft=str(random_head_folder(reference, tmp_path)), depth=3, topk=2, tree_size=5)
    else:
        spec = SpecConfig("ngram", depth=3)
    llm = tiny_llm(monkeypatch, reference, spec=spec, compile=True, max_num_seqs=3)
    engine = llm.engine
    # Trees at batch sizes 1 and 2, none at 3: both kinds of step, and a batch that starts drafting again
    # when it shrinks, whose sequences first need a step with features and no tree.
    engine.decoder.policy = SpecPolicy(((2, TreeShape(spec.depth, spec.max_draft_nodes)),))
    free_blocks = engine.block_manager.num_free_blocks
    engine.warm_up()
    assert engine.block_manager.num_free_blocks == free_blocks
    if method == "eagle3":
        assert engine.decoder.drafter.cache.held == 0
    graphs = _graphs()

    # Repeating prompts, so that prompt lookup finds whole chains too.
    prompts = [random_prompt(5, seed, VOCAB) * 4 for seed in range(3)]
    lengths = (6, 14, 24)
    outputs = [llm.generate({"prompt_token_ids": prompts[0]}, greedy(lengths[-1]))[0]]
    outputs += llm.generate([{"prompt_token_ids": p} for p in prompts],
                            [greedy(length) for length in lengths])
    assert _graphs() == graphs, "a request compiled a graph that the warm-up should have built"
    expected = [greedy_with_logits(reference, prompt, length)[0]
                for prompt, length in zip([prompts[0], *prompts], [lengths[-1], *lengths], strict=True)]
    assert [o.token_ids for o in outputs] == expected
    assert sum(o.drafted_tokens for o in outputs) > 0
    assert not engine.runner._compile_failed
    assert not engine.decoder.verify_steps.calls.failed


@pytest.mark.parametrize("max_model_len", [7, 12, 40])
def test_warm_up_sequences_fit_the_context_window(monkeypatch, reference, tmp_path, max_model_len):
    spec = SpecConfig("eagle3", draft=str(random_head_folder(reference, tmp_path)), depth=3, topk=2, tree_size=5)
    llm = tiny_llm(monkeypatch, reference, spec=spec, max_model_len=max_model_len, max_num_seqs=2)
    decoder = llm.engine.decoder
    positions = []
    original = decoder.runner.decode_rows

    def recorded(input_ids, positions_, meta, features=False):
        positions.append(int(positions_.max()))
        return original(input_ids, positions_, meta, features)

    monkeypatch.setattr(decoder.runner, "decode_rows", recorded)
    # Eagerly (compile off), the warm-up's steps themselves: none may reach past the window. A window of
    # 7 cannot hold a prompt of 2 tokens and the tree after it: no speculative step is warmed there.
    decoder.warm_up(2)
    assert max(positions, default=-1) < max_model_len
    assert bool(positions) == (max_model_len > 7)
    assert decoder.drafter.cache.held == 0
    prompt = random_prompt(4, 0, VOCAB)
    room = max_model_len - len(prompt)
    assert llm.generate({"prompt_token_ids": prompt}, greedy(room))[0].token_ids == \
        greedy_with_logits(reference, prompt, room)[0]
