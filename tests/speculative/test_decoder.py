"""Speculative decoding in the whole engine on a small random model: greedy output identical to plain
decoding, and sampled output distributed exactly as the target (transformers' logits as the oracle)."""

from __future__ import annotations

import pytest

from kilotok import SamplingParams
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.tree import DraftTree, DraftTrees
from tests.tiny_engine import (
    VOCAB,
    RandomTreeDrafter,
    chi_square_p_value,
    exact_joint,
    first_three_token_counts,
    mixed_greedy_params,
    mixed_prompts,
    tiny_llm,
    use_drafter,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("drafter", ["ngram", "random-tree"])
def test_greedy_output_is_identical_to_plain_decoding(monkeypatch, reference, drafter):
    prompts, params = mixed_prompts(24, seed=1), mixed_greedy_params(24)
    # A context window shorter than some prompt + max_tokens, so trees also get cut at its edge.
    plain = tiny_llm(monkeypatch, reference, max_model_len=40)
    spec = tiny_llm(monkeypatch, reference, max_model_len=40, spec=SpecConfig("ngram", depth=6))
    if drafter == "random-tree":
        use_drafter(spec, RandomTreeDrafter(VOCAB, max_nodes=6, seed=0))
    expected = plain.generate(prompts, params)
    together = spec.generate(prompts, params)
    alone = [spec.generate(p, sp)[0] for p, sp in zip(prompts[:8], params[:8], strict=True)]
    for want, got in zip(expected + expected[:8], together + alone, strict=True):
        assert (got.token_ids, got.finish_reason, got.text) == (want.token_ids, want.finish_reason, want.text)
    stats = spec.engine.spec_stats
    assert stats.accepted_tokens > 0 and stats.drafted_tokens > stats.accepted_tokens
    assert spec.engine.block_manager.num_free_blocks == spec.engine.block_manager.num_usable_blocks


def test_preemption_keeps_greedy_identity(monkeypatch, reference):
    prompts = mixed_prompts(6, seed=2)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = tiny_llm(monkeypatch, reference)
    squeezed = tiny_llm(monkeypatch, reference, kv_cache_blocks=20, spec=SpecConfig("ngram", depth=4))
    expected = [o.token_ids for o in plain.generate(prompts, params)]
    assert [o.token_ids for o in squeezed.generate(prompts, params)] == expected


def test_request_metrics_count_what_was_emitted(monkeypatch, reference):
    spec = tiny_llm(monkeypatch, reference, spec=SpecConfig("ngram", depth=4))
    prompt = {"prompt_token_ids": [1, 2, 3] * 6}
    output = spec.generate(prompt, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))[0]
    assert output.num_output_tokens == 30
    # The prefill samples the first token; every later token came from a target forward of decoding.
    assert output.acceptance_length == pytest.approx(29 / output.target_forwards)
    assert output.target_forwards <= 29 and output.accepted_tokens == 29 - output.target_forwards
    assert output.to_json_dict()["acceptance_length"] == output.acceptance_length


class ContinuationDrafter:
    """Proposes the plain greedy continuation itself: every node is accepted, so a step's path runs past
    whatever a request may still emit."""

    aux_layer_ids: tuple[int, ...] = ()

    def __init__(self, continuation: list[int]) -> None:
        self.continuation = continuation

    def propose(self, seqs, shape):
        chains = [DraftTree.chain(self.continuation[len(seq) : len(seq) + shape.depth]) for seq in seqs]
        return DraftTrees.from_trees(chains, width=shape.depth)

    def prefilled(self, seq, start, features, next_token) -> None:
        """Nothing to keep."""

    def verified(self, seq, tokens, features) -> None:
        """Nothing to keep."""

    def release(self, seq) -> None:
        """Nothing kept."""


@pytest.mark.parametrize("max_tokens", [2, 7, 9])
def test_a_path_past_max_tokens_is_cut_after_verification(monkeypatch, reference, max_tokens):
    """Chains of 4 always accepted emit 5 tokens a step: the last step's path is cut to what the request
    may still emit (with 2, one token left after the prompt: no tree at all), and the counters count only
    the tokens kept."""
    prompt = {"prompt_token_ids": [5, 1, 2, 7]}
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    # The continuation goes on past max_tokens, so the drafter proposes whole chains to the end.
    longer = SamplingParams(temperature=0.0, max_tokens=max_tokens + 8, ignore_eos=True)
    plain = tiny_llm(monkeypatch, reference).generate(prompt, longer)[0].token_ids
    spec = tiny_llm(monkeypatch, reference, spec=SpecConfig("ngram", depth=4))
    use_drafter(spec, ContinuationDrafter(prompt["prompt_token_ids"] + plain))
    output = spec.generate(prompt, params)[0]
    assert output.token_ids == plain[:max_tokens] and output.num_output_tokens == max_tokens
    # After the prefill's token: full steps of 5 (4 accepted + the bonus), then a step cut to the rest,
    # all of it accepted drafts, or, with one token left, a plain step.
    full_steps, rest = divmod(max_tokens - 1, 5)
    assert output.target_forwards == full_steps + (rest > 0)
    assert output.accepted_tokens == 4 * full_steps + (rest if rest > 1 else 0)
    assert output.drafted_tokens == 4 * (full_steps + (rest > 1))


@pytest.mark.parametrize("settings", [
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    {"temperature": 0.7, "top_k": 4, "top_p": 1.0},
    {"temperature": 1.3, "top_k": 0, "top_p": 0.8},
])
def test_sampled_tokens_follow_the_target_distribution(monkeypatch, reference, settings):
    prompt = [3, 1, 4, 1, 5]
    samples = 2000
    spec = tiny_llm(monkeypatch, reference, max_num_seqs=samples, kv_cache_blocks=samples * 6,
                    spec=SpecConfig("ngram", depth=6))
    use_drafter(spec, RandomTreeDrafter(VOCAB, max_nodes=6, seed=1))
    params = [SamplingParams(max_tokens=4, ignore_eos=True, seed=seed, **settings) for seed in range(samples)]
    outputs = spec.generate([{"prompt_token_ids": prompt}] * samples, params)
    counts = first_three_token_counts(outputs)
    joint = exact_joint(reference, prompt, settings)
    assert counts[joint == 0].sum() == 0, "sampled a continuation the target gives probability 0"
    assert chi_square_p_value(counts, joint) > 1e-3
    stats = spec.engine.spec_stats
    # Mixed acceptance: some drafted tokens accepted, most rejected.
    assert 0 < stats.accepted_tokens < stats.drafted_tokens
