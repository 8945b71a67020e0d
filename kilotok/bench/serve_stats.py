"""Per-request timings of `kilotok bench serve` and the figures one concurrency level reports.

Everything here works on finished timings, so it is tested with hand-made numbers and no server.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from kilotok.bench.latency_report import percentile


@dataclass(frozen=True)
class RequestTiming:
    """One streamed request, with perf_counter times in seconds as the client saw them."""

    sent_s: float
    done_s: float
    first_token_s: float | None = None
    last_token_s: float | None = None
    output_tokens: int = 0
    # Why the request failed (HTTP error, dropped connection, no usage), or None when it completed.
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.sent_s

    @property
    def tokens_per_s_per_user(self) -> float | None:
        """The rate one user watches the answer stream at: tokens after the first over the time they took.

        None when it is undefined: fewer than two tokens, or all of them in one chunk.
        """
        if self.first_token_s is None or self.last_token_s is None or self.output_tokens < 2:
            return None
        streaming_s = self.last_token_s - self.first_token_s
        if streaming_s <= 0:
            return None
        return (self.output_tokens - 1) / streaming_s


@dataclass(frozen=True)
class LevelSummary:
    """What one concurrency level measured. Figures without a single sample are None."""

    concurrency: int
    num_requests: int
    num_failed: int
    output_tokens: int
    wall_s: float
    median_tokens_per_s_per_user: float | None
    p10_tokens_per_s_per_user: float | None
    median_ttft_s: float | None
    p99_ttft_s: float | None
    total_output_tokens_per_s: float
    # Tokens emitted per target decode forward over the level (1.0 without speculation), None if unknown.
    acceptance_length: float | None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _percentile(values: list[float], percent: float) -> float | None:
    return percentile(values, percent) if values else None


def summarize_level(
    concurrency: int, timings: list[RequestTiming], wall_s: float, acceptance_length: float | None
) -> LevelSummary:
    """Per-user and TTFT statistics over completed requests; total throughput over the level's wall time
    (failed requests stay in the count of failures and out of every statistic)."""
    if wall_s <= 0:
        raise ValueError(f"a level's wall time must be positive, got {wall_s}")
    completed = [timing for timing in timings if timing.error is None]
    rates = [rate for timing in completed if (rate := timing.tokens_per_s_per_user) is not None]
    ttfts = [ttft for timing in completed if (ttft := timing.ttft_s) is not None]
    output_tokens = sum(timing.output_tokens for timing in completed)
    return LevelSummary(
        concurrency=concurrency,
        num_requests=len(timings),
        num_failed=len(timings) - len(completed),
        output_tokens=output_tokens,
        wall_s=wall_s,
        median_tokens_per_s_per_user=_median(rates),
        p10_tokens_per_s_per_user=_percentile(rates, 10),
        median_ttft_s=_median(ttfts),
        p99_ttft_s=_percentile(ttfts, 99),
        total_output_tokens_per_s=output_tokens / wall_s,
        acceptance_length=acceptance_length,
    )
