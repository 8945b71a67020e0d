"""The seam between the engine and how a step decodes: a step's work (`ScheduledBatch`, filled by the
scheduler), its results (one `StepResult` per sequence, applied by `Scheduler.postprocess`), and the
`Decoder`, plain or speculative, that turns one into the other.

The engine hands every step's batch to its decoder and applies the results; it never knows whether
speculation is on. `PlainDecoder` samples one token per decoding sequence; the speculative
decoder (kilotok/speculative/decoder.py) wraps a PlainDecoder, as SGLang's speculative worker wraps the
target worker, and drafts and verifies several tokens per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from kilotok.runner.model_runner import ModelRunner
from kilotok.sequence import Sequence


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    """Decoding sequences first, then those running prompt chunks."""
    num_new_tokens: list[int]
    """Tokens each sequence runs this step, from its num_cached_tokens on."""
    samples: list[bool]
    """Whether each sequence's tokens reach its end, so the step samples its next token."""
    num_decodes: int
    """How many leading sequences decode (their prompt was done before this step): the compiled decode
    step, or a speculative step, runs them; the rest go through the prefill path."""

    @property
    def decode_seqs(self) -> list[Sequence]:
        return self.seqs[: self.num_decodes]

    @property
    def has_prefill(self) -> bool:
        return self.num_decodes < len(self.seqs)

    def prefill_part(self) -> ScheduledBatch:
        """The prompt chunks of this step, as a batch of their own."""
        rest = slice(self.num_decodes, None)
        return ScheduledBatch(self.seqs[rest], self.num_new_tokens[rest], self.samples[rest], 0)


@dataclass(frozen=True)
class DraftOutcome:
    """What a speculative step drafted and the target accepted for one sequence."""

    drafted: int
    max_depth: int
    accepted: int


@dataclass
class StepResult:
    """What one step did for one sequence."""

    tokens: list[int]
    """New tokens in order: one for a plain decode or a prompt's last chunk, accepted drafts plus the
    target's bonus token for a speculative step, none for a prompt chunk that does not reach the end."""
    num_computed: int
    """Tokens whose keys and values this step wrote and keeps: the cache mark moves on by this many."""
    draft: DraftOutcome | None = None
    """Set by speculative steps (also those that drafted nothing), for the request's counters."""


class Decoder(Protocol):
    lookahead_slots: int
    """KV-cache slots a decode step may write past a sequence's end (draft tokens): the scheduler reserves
    them, so the step never runs out of blocks."""

    def step(self, batch: ScheduledBatch) -> list[StepResult]:
        """Run the batch; one result per sequence of `batch.seqs`, in order. Sequences are only read."""

    def release(self, seq: Sequence) -> None:
        """The sequence finished, or was preempted and lost its KV blocks: drop what the decoder keeps for it."""

    def warm_up(self, max_num_seqs: int, progress: bool = False) -> None:
        """Build now every compiled graph that steps of up to `max_num_seqs` decoding sequences run, so that
        none is compiled while requests wait. Touches no sequence, KV block or counter of the engine's."""


class PlainDecoder:
    lookahead_slots = 0

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def step(self, batch: ScheduledBatch) -> list[StepResult]:
        # Decoding rows and prompt chunks run as separate forwards: the decoding rows through the compiled
        # decode step, where the prefill path would attend sequence by sequence.
        results = self.decode(batch.decode_seqs) if batch.num_decodes else []
        if batch.has_prefill:
            results += self.prefill(batch.prefill_part())[0]
        return results

    def release(self, seq: Sequence) -> None:
        """A plain decoder keeps nothing per sequence."""

    def warm_up(self, max_num_seqs: int, progress: bool = False) -> None:
        self.runner.compile_buckets(range(1, max_num_seqs + 1), progress)

    def decode(self, seqs: list[Sequence]) -> list[StepResult]:
        return [StepResult([token], 1) for token in self.runner.decode(seqs)[0].tolist()]

    def prefill(self, batch: ScheduledBatch) -> tuple[list[StepResult], list[torch.Tensor] | None]:
        """Results of the prompt chunks, and each chunk's features when the runner collects them."""
        tokens, features = self.runner.prefill(batch.seqs, batch.num_new_tokens)
        sampled = iter(tokens.tolist())
        results = [StepResult([next(sampled)] if sample else [], count)
                   for count, sample in zip(batch.num_new_tokens, batch.samples, strict=True)]
        return results, features
