"""The batched sampler against exact math: hand-computed distributions, a plain-Python reference of each
filter's definition, and chi-square tests of drawn frequencies (fixed seeds, so they never flake)."""

from __future__ import annotations

import math

import pytest
import torch

from kilotok.layers.sampler import (
    Sampler,
    SamplingTensors,
    exponential_noise,
    make_generator,
    processed_probs,
    race,
    sample,
)
from kilotok.sampling_params import SamplingParams

LOGITS = [2.0, 1.5, 1.4, 0.3, -0.5, 0.9, -1.0, 1.1, 0.0, -2.0]
SETTINGS = [
    {},
    {"temperature": 0.6},
    {"temperature": 2.0},
    {"top_k": 3},
    {"top_k": 3, "temperature": 0.5},
    {"top_p": 0.8},
    {"top_p": 0.5, "temperature": 1.3},
    {"min_p": 0.3},
    {"temperature": 0.8, "top_k": 6, "top_p": 0.85, "min_p": 0.4},
    {"temperature": 2.0, "top_k": -1, "top_p": 0.95},
]
ALPHA = 1e-3
DRAWS = 20_000


def chi2_sf(x: float, dof: int) -> float:
    """P(chi2_dof > x) = Q(dof/2, x/2), by the closed-form recurrence Q(a+1, y) = Q(a, y) + y^a e^-y / a!."""
    y = x / 2
    a = 0.5 if dof % 2 else 1.0
    tail = math.erfc(math.sqrt(y)) if dof % 2 else math.exp(-y)
    term = y**a * math.exp(-y) / math.gamma(a + 1)
    while a < dof / 2:
        tail += term
        a += 1
        term *= y / a
    return tail


def assert_frequencies_match(tokens: torch.Tensor, expected: list[float]) -> None:
    counts = torch.bincount(tokens, minlength=len(expected)).tolist()
    assert all(c == 0 for c, p in zip(counts, expected, strict=True) if p == 0), counts
    support = [(c, p * len(tokens)) for c, p in zip(counts, expected, strict=True) if p > 0]
    statistic = sum((c - e) ** 2 / e for c, e in support)
    p_value = chi2_sf(statistic, len(support) - 1) if len(support) > 1 else 1.0
    assert p_value > ALPHA, f"counts {counts} unlikely under {expected} (p = {p_value:.2e})"


def reference_distribution(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> list[float]:
    """Each filter's definition, written out with plain Python floats."""
    vocab = range(len(logits))
    if temperature == 0:
        best = min(vocab, key=lambda i: (-logits[i], i))
        return [float(i == best) for i in vocab]
    scaled = [x / temperature for x in logits]
    kept = set(vocab)
    if top_k > 0:
        kth_largest = sorted(scaled, reverse=True)[min(top_k, len(logits)) - 1]
        kept = {i for i in kept if scaled[i] >= kth_largest}
    top = max(scaled)
    probs = _normalised({i: math.exp(scaled[i] - top) for i in kept}, len(logits))
    if top_p < 1:
        mass, needed = 0.0, []
        for i in sorted(kept, key=lambda i: -probs[i]):
            if mass >= top_p:
                break
            needed.append(i)
            mass += probs[i]
        last_needed = min(probs[i] for i in needed)
        kept = {i for i in kept if probs[i] >= last_needed}
        probs = _normalised({i: probs[i] for i in kept}, len(logits))
    if min_p > 0:
        kept = {i for i in kept if probs[i] >= min_p * max(probs)}
        probs = _normalised({i: probs[i] for i in kept}, len(logits))
    return probs


def _normalised(weights: dict[int, float], vocab_size: int) -> list[float]:
    total = sum(weights.values())
    return [weights.get(i, 0.0) / total for i in range(vocab_size)]


def probs_for(logits: list[float], **params) -> torch.Tensor:
    t = SamplingTensors.from_params([SamplingParams(**params)], "cpu")
    return processed_probs(torch.tensor([logits]), t)[0]


LOG_P = [math.log(p) for p in (0.4, 0.3, 0.2, 0.1)]
ROOTS = 0.4**0.5 + 0.3**0.5  # temperature 2 takes square roots of the probabilities


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [0.4, 0.3, 0.2, 0.1]),
        ({"temperature": 0.5}, [16 / 30, 9 / 30, 4 / 30, 1 / 30]),
        ({"top_k": 3}, [4 / 9, 3 / 9, 2 / 9, 0]),
        ({"top_k": 99}, [0.4, 0.3, 0.2, 0.1]),
        ({"top_p": 0.5}, [4 / 7, 3 / 7, 0, 0]),
        ({"top_p": 0.75}, [4 / 9, 3 / 9, 2 / 9, 0]),
        ({"min_p": 0.6}, [4 / 7, 3 / 7, 0, 0]),
        # top-p sees the renormalised top-k distribution (4/7, 3/7): 4/7 already covers 0.55.
        ({"top_k": 2, "top_p": 0.55}, [1, 0, 0, 0]),
        ({"temperature": 2.0, "top_k": 2}, [0.4**0.5 / ROOTS, 0.3**0.5 / ROOTS, 0, 0]),
        ({"temperature": 0}, [1, 0, 0, 0]),
    ],
)
def test_hand_computed_distributions(params: dict, expected: list[float]) -> None:
    expected_tensor = torch.tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(probs_for(LOG_P, **params), expected_tensor, atol=1e-6, rtol=0)


def test_top_k_keeps_every_token_tied_at_the_kth_logit() -> None:
    e = math.e
    expected = [0, e**3 / (e**3 + 2 * e**2), e**2 / (e**3 + 2 * e**2), e**2 / (e**3 + 2 * e**2), 0]
    torch.testing.assert_close(probs_for([1.0, 3.0, 2.0, 2.0, 0.0], top_k=2), torch.tensor(expected))


@pytest.mark.parametrize("permutation", [[0, 1, 2, 3, 4], [2, 4, 0, 3, 1], [4, 3, 2, 1, 0]])
def test_top_p_keeps_ties_with_the_last_needed_token_in_any_vocab_order(permutation: list[int]) -> None:
    probs = [0.4, 0.2, 0.2, 0.1, 0.1]  # 0.5 needs 0.4 and one 0.2: both 0.2s stay
    logits = [math.log(probs[i]) for i in permutation]
    expected = [[0.5, 0.25, 0.25, 0.0, 0.0][i] for i in permutation]
    torch.testing.assert_close(probs_for(logits, top_p=0.5), torch.tensor(expected), atol=1e-6, rtol=0)


def test_greedy_takes_the_lowest_id_among_tied_maxima() -> None:
    assert probs_for([1.0, 3.0, 3.0, 0.0], temperature=0).tolist() == [0, 1, 0, 0]


def test_tiny_temperature_does_not_overflow() -> None:
    assert probs_for([50.0, 49.0, -3.0], temperature=1e-37).tolist() == [1, 0, 0]


@pytest.mark.parametrize("params", SETTINGS, ids=str)
def test_processed_probs_match_the_reference(params: dict) -> None:
    expected = torch.tensor(reference_distribution(LOGITS, **params), dtype=torch.float32)
    torch.testing.assert_close(probs_for(LOGITS, **params), expected, atol=1e-6, rtol=0)


def test_each_row_of_a_mixed_batch_uses_its_own_parameters() -> None:
    settings = [*SETTINGS, {"temperature": 0}]
    rows = [LOGITS[i:] + LOGITS[:i] for i in range(len(settings))]
    t = SamplingTensors.from_params([SamplingParams(**s) for s in settings], "cpu")
    expected = torch.tensor([reference_distribution(r, **s) for r, s in zip(rows, settings, strict=True)])
    torch.testing.assert_close(processed_probs(torch.tensor(rows), t), expected, atol=1e-6, rtol=0)


def test_top_p_one_keeps_the_whole_tail_of_a_large_vocabulary() -> None:
    logits = torch.randn(2, 49_152, generator=torch.Generator().manual_seed(0)) * 4
    t = SamplingTensors.from_params([SamplingParams(top_p=1.0), SamplingParams(top_p=0.9)], "cpu")
    probs = processed_probs(logits, t)
    torch.testing.assert_close(probs[0], logits[0].softmax(-1), atol=1e-7, rtol=1e-5)
    assert (probs[0] > 0).all()


@pytest.mark.parametrize("params", SETTINGS, ids=str)
def test_drawn_frequencies_follow_the_reference(params: dict) -> None:
    torch.manual_seed(1)
    t = SamplingTensors.from_params([SamplingParams(**params)] * DRAWS, "cpu")
    tokens = Sampler()(torch.tensor([LOGITS]).expand(DRAWS, -1), t, [None] * DRAWS)
    assert_frequencies_match(tokens, reference_distribution(LOGITS, **params))


def test_seeded_generators_draw_from_the_same_distribution() -> None:
    params = {"temperature": 0.8, "top_k": 6, "top_p": 0.85}
    probs = probs_for(LOGITS, **params).expand(DRAWS, -1)
    tokens = sample(probs, [make_generator(seed, "cpu") for seed in range(DRAWS)])
    assert_frequencies_match(tokens, reference_distribution(LOGITS, **params))


def test_the_frequency_check_rejects_a_slightly_wrong_distribution() -> None:
    torch.manual_seed(1)
    tokens = sample(probs_for(LOGITS, temperature=1.05).expand(DRAWS, -1), [None] * DRAWS)
    with pytest.raises(AssertionError, match="unlikely"):
        assert_frequencies_match(tokens, reference_distribution(LOGITS))


@pytest.mark.parametrize(("statistic", "dof"), [(3.841459, 1), (5.991465, 2), (11.0705, 5), (18.30704, 10)])
def test_chi2_survival_function_matches_tabulated_critical_values(statistic: float, dof: int) -> None:
    assert chi2_sf(statistic, dof) == pytest.approx(0.05, abs=1e-6)


def test_greedy_rows_always_get_the_argmax() -> None:
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(3))
    greedy = SamplingTensors.from_params([SamplingParams(temperature=0)] * 6, "cpu")
    alternating = [SamplingParams(temperature=0), SamplingParams(temperature=5.0)] * 3
    mixed = SamplingTensors.from_params(alternating, "cpu")
    assert torch.equal(Sampler()(logits, greedy, [None] * 6), logits.argmax(-1))
    for seed in range(20):
        torch.manual_seed(seed)
        assert torch.equal(Sampler()(logits, mixed, [None] * 6)[::2], logits[::2].argmax(-1))


def seeded_tokens(
    batch: list[SamplingParams], row: int, logits_per_step: torch.Tensor, global_seed: int
) -> list[int]:
    """The tokens one row of `batch` gets over the steps; other rows see their own random logits."""
    torch.manual_seed(global_seed)
    t = SamplingTensors.from_params(batch, "cpu")
    generators = [make_generator(p.seed, "cpu") for p in batch]
    drawn = []
    for step_logits in logits_per_step:
        logits = torch.randn(len(batch), step_logits.shape[-1])
        logits[row] = step_logits
        drawn.append(Sampler()(logits, t, generators)[row].item())
    return drawn


def test_a_seeded_sequence_gets_the_same_tokens_in_any_batch() -> None:
    logits_per_step = torch.randn(30, 50, generator=torch.Generator().manual_seed(5))
    target = SamplingParams(temperature=1.0, top_p=0.95, seed=1234)
    alone = seeded_tokens([target], 0, logits_per_step, global_seed=0)
    crowded = [SamplingParams(temperature=0.8), SamplingParams(seed=7, top_k=5), target]
    crowded.append(SamplingParams(temperature=0))
    first = [target, SamplingParams(seed=1234, top_p=0.5)]
    assert seeded_tokens(crowded, 2, logits_per_step, global_seed=1) == alone
    assert seeded_tokens(first, 0, logits_per_step, global_seed=2) == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.95, seed=1235)
    assert seeded_tokens([other_seed], 0, logits_per_step, global_seed=0) != alone


def test_sample_wants_one_generator_per_row() -> None:
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        sample(torch.full((3, 4), 0.25), [None, None])


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile is unavailable here")
def test_sampling_math_compiles_into_one_graph_without_host_syncs() -> None:
    settings = [*SETTINGS, {"temperature": 0}]
    t = SamplingTensors.from_params([SamplingParams(**s) for s in settings], "cpu")
    logits = torch.randn(len(settings), 10, generator=torch.Generator().manual_seed(4))
    compiled_probs = torch.compile(processed_probs, fullgraph=True, backend="aot_eager")
    probs = processed_probs(logits, t)
    torch.testing.assert_close(compiled_probs(logits, t), probs)
    noise = exponential_noise(probs.shape, [None] * len(settings), probs.device)
    compiled_race = torch.compile(race, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled_race(probs, noise), race(probs, noise))


@pytest.mark.gpu
def test_a_cuda_sampling_step_never_synchronises_with_the_host() -> None:
    params = [SamplingParams(**s) for s in SETTINGS] + [SamplingParams(temperature=0), SamplingParams(seed=9)]
    logits = torch.randn(len(params), 1000, device="cuda")
    generators = [make_generator(p.seed, "cuda") for p in params]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t = SamplingTensors.from_params(params, "cuda")
        tokens = Sampler()(logits, t, generators)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(tokens[-2], logits[-2].argmax())
