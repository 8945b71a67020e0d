"""The seam between the engine and how a step decodes: one `Decoder`, plain or speculative.

The engine hands every step's `ScheduledBatch` to its decoder and applies the `StepResult`s; it never
knows whether speculation is on. `PlainDecoder` samples one token per decoding sequence; the speculative
decoder (kilotok/speculative/decoder.py) wraps a PlainDecoder, as SGLang's speculative worker wraps the
target worker, and drafts and verifies several tokens per step.
"""

from __future__ import annotations

from typing import Protocol

import torch

from kilotok.runner.batch import ScheduledBatch, StepResult
from kilotok.runner.model_runner import ModelRunner
from kilotok.sequence import Sequence


class Decoder(Protocol):
    lookahead_slots: int
    """KV-cache slots a decode step may write past a sequence's end (draft tokens): the scheduler reserves
    them, so the step never runs out of blocks."""
    allows_prefix_caching: bool
    """Whether a sequence may start from cached prompt blocks (a drafter that reads the target's
    features of every prompt position cannot: cached blocks come without them)."""

    def step(self, batch: ScheduledBatch) -> list[StepResult]:
        """Run the batch; one result per sequence of `batch.seqs`, in order. Sequences are only read."""


class PlainDecoder:
    lookahead_slots = 0
    allows_prefix_caching = True

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def step(self, batch: ScheduledBatch) -> list[StepResult]:
        # Decoding rows and prompt chunks run as separate forwards: the decoding rows through the compiled
        # decode step, where the prefill path would attend sequence by sequence.
        results = self.decode(batch.decode_seqs) if batch.num_decodes else []
        if batch.has_prefill:
            results += self.prefill(batch.prefill_part())[0]
        return results

    def decode(self, seqs: list[Sequence]) -> list[StepResult]:
        return [StepResult([token], 1) for token in self.runner.decode(seqs).tolist()]

    def prefill(self, batch: ScheduledBatch) -> tuple[list[StepResult], list[torch.Tensor] | None]:
        """Results of the prompt chunks, and each chunk's features when the runner collects them."""
        tokens, features = self.runner.prefill(batch.seqs, batch.num_new_tokens)
        sampled = iter(tokens.tolist())
        results = [StepResult([next(sampled)] if sample else [], count)
                   for count, sample in zip(batch.num_new_tokens, batch.samples, strict=True)]
        return results, features
