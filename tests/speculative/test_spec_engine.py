"""Speculative decoding in the whole engine on a small random model: greedy output identical to plain
decoding, and sampled output distributed exactly as the target (transformers' logits as the oracle)."""

from __future__ import annotations

import pytest
import torch

from kilotok import SamplingParams
from kilotok.speculative.config import SpecConfig
from tests.speculative.tiny_engine import EOS, VOCAB, RandomTreeDrafter, tiny_llm, use_drafter

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(count: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for index in range(count):
        length = 1 + index % 13
        # Half the prompts repeat a short pattern, so prompt lookup finds matches and gets accepted.
        if index % 2:
            pattern = torch.randint(0, EOS, (3,), generator=generator).tolist()
            ids = (pattern * length)[:length]
        else:
            ids = torch.randint(0, EOS, (length,), generator=generator).tolist()
        prompts.append({"prompt_token_ids": ids})
    return prompts


def _greedy_params(count: int) -> list[SamplingParams]:
    lengths = (1, 2, 5, 17, 40)
    return [SamplingParams(temperature=0.0, max_tokens=lengths[i % len(lengths)], ignore_eos=bool(i % 3),
                           stop=["<3><3><3>"] if i % 4 == 0 else None)
            for i in range(count)]


@pytest.mark.parametrize("drafter", ["ngram", "random-tree"])
def test_greedy_output_is_identical_to_plain_decoding(monkeypatch, reference, drafter):
    prompts, params = _prompts(24, seed=1), _greedy_params(24)
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
    prompts = _prompts(6, seed=2)
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


def _filtered(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The target distribution, written out directly: temperature, top-k, then top-p on the rest."""
    scaled = logits.double() / temperature
    if top_k:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(dim=-1)
    if top_p < 1:
        ranked, order = probs.sort(dim=-1, descending=True)
        drop = (ranked.cumsum(dim=-1) - ranked) >= top_p
        probs = probs.scatter(-1, order, ranked.masked_fill(drop, 0.0))
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _first_three_token_counts(outputs) -> torch.Tensor:
    """How often each (token 1, token 2, token 3) continuation was sampled: [VOCAB, VOCAB, VOCAB]."""
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    for output in outputs:
        counts[tuple(output.token_ids[:3])] += 1
    return counts


def _exact_joint(reference, prompt: list[int], settings: dict) -> torch.Tensor:
    """P(x1, x2, x3 | prompt) [V, V, V] from transformers' logits over every two-token continuation."""
    pairs = torch.cartesian_prod(torch.arange(VOCAB), torch.arange(VOCAB))
    inputs = torch.cat([torch.tensor(prompt).expand(len(pairs), -1), pairs], dim=1)
    with torch.no_grad():
        logits = reference(inputs).logits
    n = len(prompt)
    first = _filtered(logits[0, n - 1], **settings)
    second = _filtered(logits[::VOCAB, n], **settings)
    third = _filtered(logits[:, n + 1], **settings).view(VOCAB, VOCAB, VOCAB)
    return first[:, None, None] * second[:, :, None] * third


def _chi_square_p_value(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Cells expected fewer than 5 times are pooled into one, as the chi-square approximation needs."""
    total = observed.sum()
    expected = expected_probs.flatten() * total
    observed = observed.flatten().double()
    small = expected < 5
    bins_observed = torch.cat([observed[~small], observed[small].sum().view(1)])
    bins_expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    statistic = ((bins_observed - bins_expected) ** 2 / bins_expected.clamp(min=1e-12)).sum()
    degrees = len(bins_observed) - 1
    return float(torch.special.gammaincc(torch.tensor(degrees / 2), statistic / 2))


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
    counts = _first_three_token_counts(outputs)
    joint = _exact_joint(reference, prompt, settings)
    assert counts[joint == 0].sum() == 0, "sampled a continuation the target gives probability 0"
    assert _chi_square_p_value(counts, joint) > 1e-3
    stats = spec.engine.spec_stats
    # Mixed acceptance: some drafted tokens accepted, most rejected.
    assert 0 < stats.accepted_tokens < stats.drafted_tokens
