"""The Triton sampling tail against the reference sampler (kilotok/layers/sampler.py): with the same noise
it draws the same token as the reference race over `processed_probs`, row by row, for every filter and
mix of filters; greedy rows get the argmax (lowest id among ties); and drawn frequencies follow each
filter's exact distribution (chi-square, fixed seeds)."""

from __future__ import annotations

import torch

from kilotok.kernels.backend import KernelBackend
from kilotok.layers.sampler import Sampler, SamplingTensors, exponential_noise, processed_probs, race
from kilotok.sampling_params import SamplingParams
from tests.layers.test_sampler import LOGITS, assert_frequencies_match, reference_distribution

SETTINGS = [
    {"temperature": 0.7},
    {"top_k": 5},
    {"top_k": 1, "temperature": 1.5},
    {"top_p": 0.6},
    {"top_p": 0.9, "temperature": 0.4},
    {"min_p": 0.2},
    {"temperature": 0.8, "top_k": 40, "top_p": 0.85, "min_p": 0.05},
    {"temperature": 0},
    {"temperature": 1.2, "top_k": 300, "top_p": 0.95},
]


def test_same_noise_draws_the_reference_token_in_every_row():
    rows, vocab = 2 * len(SETTINGS), 1100  # a vocabulary of one full tile and a partial one
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(rows, vocab, generator=generator) * 3
    logits[5, 100:104] = logits[5].max() + 1  # tied maxima: greedy and top-k keep or pick ties exactly
    params = [SamplingParams(**SETTINGS[row % len(SETTINGS)]) for row in range(rows)]
    t = SamplingTensors.from_params(params, "cpu")
    noise = exponential_noise((rows, vocab), [torch.Generator().manual_seed(row) for row in range(rows)], "cpu")
    expected = race(processed_probs(logits, t), noise)
    from kilotok.kernels.triton.sampling import sample_tokens

    got = sample_tokens(logits, noise, t.temperatures, t.top_k, t.top_p, t.min_p, t.greedy, t.any_top_k,
                        t.any_top_p, t.any_min_p)
    assert got.tolist() == expected.tolist()


def test_greedy_rows_beside_sampled_rows_take_the_first_maximum():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.5, 0.1, 0.5, 0.2]])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.9), SamplingParams(temperature=0)]
    t = SamplingTensors.from_params(params, "cpu")
    tokens = Sampler(KernelBackend.TRITON)(logits[[0, 1, 1]], t, [None] * 3)
    assert tokens[0].item() == 1 and tokens[2].item() == 0


def test_drawn_frequencies_follow_the_exact_distribution():
    """Temperature and min-p only: the interpreter runs a row's 63 bisection passes of top-k and top-p too
    slowly for thousands of draws; those filters are checked token for token against the reference above,
    whose own frequencies tests/layers/test_sampler.py checks."""
    draws = 500
    torch.manual_seed(2)
    settings = {"temperature": 0.8, "min_p": 0.1}
    t = SamplingTensors.from_params([SamplingParams(**settings)] * draws, "cpu")
    tokens = Sampler(KernelBackend.TRITON)(torch.tensor([LOGITS]).expand(draws, -1), t, [None] * draws)
    assert_frequencies_match(tokens, reference_distribution(LOGITS, **settings))
