"""EAGLE-3 drafting in the whole engine on a small random model with a random head: greedy output
identical to plain decoding, sampled output distributed as the target, mismatched heads refused."""

from __future__ import annotations

import json

import pytest
import torch

from kilotok import SamplingParams
from kilotok.errors import ModelFormatError
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.policy import SpecPolicy, TreeShape
from tests.tiny_engine import (
    chi_square_p_value,
    exact_joint,
    first_three_token_counts,
    mixed_greedy_params,
    mixed_prompts,
    random_head_folder,
    record_calls,
    tiny_llm,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def head_folder(reference, tmp_path_factory):
    return random_head_folder(reference, tmp_path_factory.mktemp("head"))


def _eagle3(folder, **shape) -> SpecConfig:
    return SpecConfig("eagle3", draft=str(folder), **({"depth": 3, "topk": 2, "tree_size": 5} | shape))


@pytest.mark.parametrize("shape", [{}, {"depth": 1, "topk": 1, "tree_size": 1}, {"depth": 4, "topk": 3}])
def test_greedy_output_is_identical_to_plain_decoding(monkeypatch, reference, head_folder, shape):
    prompts, params = mixed_prompts(16, seed=3), mixed_greedy_params(16)
    plain = tiny_llm(monkeypatch, reference, max_model_len=40)
    spec = tiny_llm(monkeypatch, reference, max_model_len=40, spec=_eagle3(head_folder, **shape))
    expected = plain.generate(prompts, params)
    for want, got in zip(expected, spec.generate(prompts, params), strict=True):
        assert (got.token_ids, got.finish_reason, got.text) == (want.token_ids, want.finish_reason, want.text)
    stats = spec.engine.spec_stats
    assert 0 < stats.accepted_tokens < stats.drafted_tokens
    # Every finished request gave its row of the head's cache back.
    assert spec.engine.decoder.drafter.cache.held == 0


def test_preempted_sequences_give_their_head_rows_back_and_keep_greedy_output(monkeypatch, reference, head_folder):
    """A cache too small for the batch preempts sequences mid-draft: each gives its head-cache row back and
    drafts again, from its recomputed prompt, in a row it gets anew."""
    prompts = mixed_prompts(6, seed=2)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = tiny_llm(monkeypatch, reference)
    squeezed = tiny_llm(monkeypatch, reference, kv_cache_blocks=20, spec=_eagle3(head_folder))
    preemptions = record_calls(monkeypatch, squeezed.engine.scheduler, "preempt")
    expected = [o.token_ids for o in plain.generate(prompts, params)]
    assert [o.token_ids for o in squeezed.generate(prompts, params)] == expected
    assert preemptions and squeezed.engine.spec_stats.accepted_tokens > 0
    assert squeezed.engine.decoder.drafter.cache.held == 0


def test_batch_sizes_without_a_tree_run_plain_steps_and_keep_greedy_output(monkeypatch, reference, head_folder):
    """The policy drafts at batch sizes 1 and 4-6, not at 2-3: those steps run the decode graph without
    features and never call the drafter; drafting resumes from the features of the steps after them."""
    prompts, params = mixed_prompts(16, seed=3), mixed_greedy_params(16)
    plain = tiny_llm(monkeypatch, reference, max_model_len=40, max_num_seqs=6)
    spec = tiny_llm(monkeypatch, reference, max_model_len=40, max_num_seqs=6, spec=_eagle3(head_folder))
    decoder, shape = spec.engine.decoder, TreeShape(3, 5)
    decoder.policy = SpecPolicy(((1, shape), (3, None), (6, shape)))
    batch_sizes, drafter_calls = [], []
    decode = decoder.decode
    monkeypatch.setattr(decoder, "decode", lambda seqs: batch_sizes.append(len(seqs)) or decode(seqs))
    for name in ("propose", "verified"):
        method = getattr(decoder.drafter, name)
        monkeypatch.setattr(decoder.drafter, name,
                            lambda *args, _method=method: drafter_calls.append(batch_sizes[-1]) or _method(*args))
    features_asked = record_calls(monkeypatch, spec.engine.runner, "decode")
    expected = plain.generate(prompts, params)
    for want, got in zip(expected, spec.generate(prompts, params), strict=True):
        assert (got.token_ids, got.finish_reason, got.text) == (want.token_ids, want.finish_reason, want.text)
    assert {1, 2, 3, 6} <= set(batch_sizes)
    assert not {2, 3} & set(drafter_calls) and {1, 6} <= set(drafter_calls)
    for (seqs, features), _, _ in features_asked:
        assert features == (len(seqs) not in (2, 3))
    assert spec.engine.spec_stats.accepted_tokens > 0


def test_sampled_tokens_follow_the_target_distribution(monkeypatch, reference, head_folder):
    prompt = [3, 1, 4, 1, 5]
    samples = 1200
    settings = {"temperature": 0.9, "top_k": 5, "top_p": 0.95}
    spec = tiny_llm(monkeypatch, reference, max_num_seqs=samples, kv_cache_blocks=samples * 6,
                    spec=_eagle3(head_folder))
    params = [SamplingParams(max_tokens=4, ignore_eos=True, seed=seed, **settings) for seed in range(samples)]
    outputs = spec.generate([{"prompt_token_ids": prompt}] * samples, params)
    counts = first_three_token_counts(outputs)
    joint = exact_joint(reference, prompt, settings)
    assert counts[joint == 0].sum() == 0
    assert chi_square_p_value(counts, joint) > 1e-3
    stats = spec.engine.spec_stats
    assert 0 < stats.accepted_tokens < stats.drafted_tokens
    # Every finished request gave its row of the head's cache back.
    assert spec.engine.decoder.drafter.cache.held == 0


def test_head_for_another_target_is_refused(monkeypatch, reference, head_folder, tmp_path):
    config = json.loads((head_folder / "config.json").read_text())
    config["kilotok"]["target"]["num_layers"] = 30
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((head_folder / "model.safetensors").read_bytes())
    with pytest.raises(ModelFormatError, match="layers"):
        tiny_llm(monkeypatch, reference, spec=_eagle3(tmp_path))


def _oracle_chain(reference, head, token_ids: list[int], depth: int) -> tuple[list[torch.Tensor], list[int]]:
    """The head's logits at each chain step and its greedy chain after `token_ids`, recomputed from
    scratch the way it was trained: step 0 over (token t + 1, target feature t) for every position with
    a causal mask, then each step feeds the previous step's output feature and token at the next
    position. Target features come from transformers' hidden states (hidden_states[i] enters layer i)."""
    with torch.no_grad():
        states = reference(torch.tensor([token_ids[:-1]]), output_hidden_states=True).hidden_states
        aux = torch.cat([states[i] for i in head.config.aux_layer_ids], dim=-1)
        count = len(token_ids) - 1
        causal = torch.ones(1, count, count, dtype=torch.bool).tril()
        out = head(torch.tensor([token_ids[1:]]), head.fuse(aux), torch.arange(count)[None], None, None, causal)
        past_k, past_v = out.k, out.v
        logits, feature = out.logits[0, -1], out.hidden[:, -1:]
        steps, chain = [], []
        for step in range(depth):
            steps.append(logits)
            chain.append(int(head.draft_to_target(logits.argmax())))
            mask = torch.ones(1, 1, past_k.shape[1] + 1, dtype=torch.bool)
            out = head(torch.tensor([[chain[-1]]]), feature, torch.tensor([[count + step]]), past_k, past_v, mask)
            past_k, past_v = torch.cat((past_k, out.k), dim=1), torch.cat((past_v, out.v), dim=1)
            logits, feature = out.logits[0, -1], out.hidden
        return steps, chain


def test_draft_chain_matches_a_recompute_from_scratch(monkeypatch, reference, head_folder):
    """With top-k 1 the tree is the head's greedy chain: after the prefill and after each verify step
    (once the head has caught up on the accepted tokens and the target's features) it must equal the
    chain recomputed over the whole context with no draft cache."""
    spec = tiny_llm(monkeypatch, reference, spec=_eagle3(head_folder, depth=3, topk=1, tree_size=3))
    engine, drafter = spec.engine, spec.engine.decoder.drafter
    recorded = []
    head_forward = drafter.head.forward
    drafter.head.forward = lambda *args: recorded.append(head_forward(*args)) or recorded[-1]
    seq = engine.add_request([3, 1, 4, 1, 5, 2, 6], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))
    chains = set()
    for _ in range(6):
        engine.step()
        drafter.catch_up([seq])
        recorded.clear()
        trees = drafter.propose([seq], TreeShape(depth=3, tree_size=3))
        drafted = [drafter.cache.logits[seq.draft_state.row]] + [out.logits[0, 0] for out in recorded]
        steps, chain = _oracle_chain(reference, drafter.head, seq.token_ids, depth=3)
        torch.testing.assert_close(torch.stack(drafted), torch.stack(steps), atol=1e-4, rtol=1e-4)
        assert trees.sizes == (3,) and trees.parents.tolist() == [[-1, 0, 1]]
        assert trees.tokens.tolist() == [chain]
        chains.add(tuple(chain))
    assert len(chains) > 1 and seq.spec_stats.target_forwards == 5
