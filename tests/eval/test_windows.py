"""Windowing and NLL bookkeeping, checked against exact counts and a hand-computed bigram model."""

from __future__ import annotations

import math

import pytest
import torch

from kilotok.errors import InvalidRequestError
from kilotok.eval.perplexity import score_tokens
from kilotok.eval.windows import perplexity_windows


def scored_positions(num_tokens: int, context_len: int, stride: int | None) -> list[int]:
    return [p for w in perplexity_windows(num_tokens, context_len, stride) for p in range(w.first_target, w.end)]


@pytest.mark.parametrize(("num_tokens", "context_len", "stride"), [(100, 7, 3), (64, 16, 15), (50, 10, 1), (9, 4, 2)])
def test_sliding_windows_score_every_token_after_the_first_exactly_once(num_tokens, context_len, stride):
    assert scored_positions(num_tokens, context_len, stride) == list(range(1, num_tokens))
    for window in perplexity_windows(num_tokens, context_len, stride):
        assert window.end - window.start <= context_len
        assert window.start < window.first_target


@pytest.mark.parametrize(("num_tokens", "context_len"), [(100, 10), (101, 10), (95, 10), (21, 10), (5, 8)])
def test_disjoint_windows_score_all_but_each_window_start(num_tokens, context_len):
    starts = set(range(0, num_tokens, context_len))
    assert scored_positions(num_tokens, context_len, None) == [p for p in range(num_tokens) if p not in starts]


@pytest.mark.parametrize(("context_len", "stride"), [(1, None), (8, 0), (8, 9)])
def test_bad_window_settings_are_rejected(context_len, stride):
    with pytest.raises(InvalidRequestError):
        perplexity_windows(100, context_len, stride)


def test_score_tokens_matches_a_hand_computed_bigram_model():
    vocab = 5
    generator = torch.Generator().manual_seed(0)
    table = torch.softmax(torch.randn(vocab, vocab, generator=generator, dtype=torch.float64), dim=-1)
    tokens = torch.randint(0, vocab, (40,), generator=generator).tolist()
    calls = []

    def bigram_logits(window: list[int]) -> torch.Tensor:
        calls.append(len(window))
        return table[torch.tensor(window)].log().float()

    total = score_tokens(bigram_logits, tokens, context_len=8, stride=None)
    targets = [p for p in range(1, 40) if p % 8 != 0]
    expected = -sum(math.log(table[tokens[p - 1], tokens[p]].item()) for p in targets)
    assert calls == [8] * 5
    assert total.num_tokens == len(targets)
    assert total.total_nll == pytest.approx(expected, rel=1e-6)
    assert total.perplexity == pytest.approx(math.exp(expected / len(targets)), rel=1e-6)
