"""A step's work and its results: the scheduler fills a `ScheduledBatch`, a decoder runs it and returns
one `StepResult` per sequence, and `Scheduler.postprocess` applies the results to the sequences."""

from __future__ import annotations

from dataclasses import dataclass

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
    def sampled_seqs(self) -> list[Sequence]:
        return [seq for seq, sample in zip(self.seqs, self.samples, strict=True) if sample]

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
