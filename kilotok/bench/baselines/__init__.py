"""Reference engines that `kilotok bench latency --compare` times against kilotok on the same prompt ids.

Each runner is imported only when a comparison asks for it, so that kilotok itself never imports
transformers or llama_cpp. Every runner returns the same `PromptMeasurement`, timed the way kilotok's
`RequestOutput` is: TTFT from the call to the first token, decode rate over the tokens after the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PromptMeasurement:
    """One prompt run at batch 1 by one engine."""

    num_prompt_tokens: int
    ttft_s: float
    decode_tokens_per_s: float
    token_ids: list[int] = field(repr=False)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.num_prompt_tokens / self.ttft_s


class EngineRunner(Protocol):
    """What the latency bench needs from an engine: a label and one timed greedy run per prompt."""

    name: str
    version: str
    # The model's end-of-sequence ids as this engine knows them (may be empty).
    stop_token_ids: frozenset[int]

    def measure(self, prompt_token_ids: list[int], max_tokens: int) -> PromptMeasurement: ...


def measurement_from_token_times(
    prompt_token_ids: list[int], start_s: float, token_times_s: list[float], token_ids: list[int]
) -> PromptMeasurement:
    """Turns per-token arrival times into TTFT and decode rate; the decode rate excludes the first token
    because its time is the prefill's."""
    if len(token_times_s) < 2:
        raise ValueError("a decode rate needs at least two generated tokens")
    decode_s = token_times_s[-1] - token_times_s[0]
    return PromptMeasurement(
        num_prompt_tokens=len(prompt_token_ids),
        ttft_s=token_times_s[0] - start_s,
        decode_tokens_per_s=(len(token_times_s) - 1) / decode_s,
        token_ids=list(token_ids),
    )
