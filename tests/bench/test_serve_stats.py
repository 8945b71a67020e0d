"""`kilotok bench serve` statistics on hand-made timings, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from kilotok.bench.serve_stats import RequestTiming, summarize_level

# sent, first token, last token, output tokens: made-up but shaped like a busy server's requests.
RAW = np.array([
    [0.00, 0.30, 2.30, 41],
    [0.05, 0.90, 3.10, 64],
    [0.10, 0.45, 1.95, 20],
    [1.20, 1.70, 4.70, 97],
    [2.00, 2.10, 2.90, 9],
    [2.40, 3.30, 6.10, 128],
    [3.00, 3.05, 5.55, 77],
])


def timings() -> list[RequestTiming]:
    return [RequestTiming(sent, last + 0.01, first, last, int(tokens)) for sent, first, last, tokens in RAW]


def test_per_user_rate_is_tokens_after_the_first_over_their_streaming_time():
    expected = (RAW[:, 3] - 1) / (RAW[:, 2] - RAW[:, 1])
    assert [t.tokens_per_s_per_user for t in timings()] == pytest.approx(expected)


def test_ttft_is_first_token_minus_send():
    assert [t.ttft_s for t in timings()] == pytest.approx(RAW[:, 1] - RAW[:, 0])


def test_level_statistics_match_numpy():
    level = summarize_level(4, timings(), wall_s=6.5, acceptance_length=1.0)
    rates = (RAW[:, 3] - 1) / (RAW[:, 2] - RAW[:, 1])
    ttfts = RAW[:, 1] - RAW[:, 0]
    assert level.median_tokens_per_s_per_user == pytest.approx(np.median(rates))
    assert level.p10_tokens_per_s_per_user == pytest.approx(np.percentile(rates, 10))
    assert level.median_ttft_s == pytest.approx(np.median(ttfts))
    assert level.p99_ttft_s == pytest.approx(np.percentile(ttfts, 99))
    assert level.output_tokens == RAW[:, 3].sum()
    assert level.total_output_tokens_per_s == pytest.approx(RAW[:, 3].sum() / 6.5)
    assert (level.concurrency, level.num_requests, level.num_failed) == (4, 7, 0)


def test_undefined_rates_and_failures_stay_out_of_the_statistics():
    single_token = RequestTiming(0.0, 0.6, 0.5, 0.5, 1)
    one_chunk = RequestTiming(0.0, 0.6, 0.5, 0.5, 12)
    failed = RequestTiming(0.0, 0.2, error="APIConnectionError: refused")
    good = timings()[:3]
    level = summarize_level(2, [single_token, one_chunk, failed, *good], wall_s=4.0, acceptance_length=None)
    rates = [t.tokens_per_s_per_user for t in good]
    ttfts = [0.5, 0.5, *[t.ttft_s for t in good]]
    assert single_token.tokens_per_s_per_user is None and one_chunk.tokens_per_s_per_user is None
    assert level.median_tokens_per_s_per_user == pytest.approx(np.median(rates))
    assert level.median_ttft_s == pytest.approx(np.median(ttfts))
    assert (level.num_requests, level.num_failed) == (6, 1)
    assert level.output_tokens == 1 + 12 + RAW[:3, 3].sum()


def test_a_level_where_everything_failed_has_no_figures():
    failed = [RequestTiming(0.0, 0.1, error="boom")] * 3
    level = summarize_level(1, failed, wall_s=0.1, acceptance_length=None)
    assert level.median_tokens_per_s_per_user is None and level.p99_ttft_s is None
    assert level.total_output_tokens_per_s == 0 and level.num_failed == 3


def test_wall_time_must_be_positive():
    with pytest.raises(ValueError):
        summarize_level(1, timings(), wall_s=0.0, acceptance_length=1.0)
