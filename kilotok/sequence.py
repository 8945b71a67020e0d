"""One request as the engine runs it. Everything that belongs to a request hangs off its `Sequence`: its
tokens, where its keys and values are, its text, its drafter's state, its timings and counters. Nothing
else keeps per-request state, so releasing a request is dropping its Sequence.

Who writes what: the block manager gives and takes KV blocks (and, on admission, the cache mark of a
reused prefix); the scheduler moves the status; `Scheduler.postprocess` applies a step's results (cache
mark, tokens, text, counters, finishing); a drafter keeps its own state in `draft_state`. The model
runner and the decoders only read sequences.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kilotok.sampling_params import SamplingParams
from kilotok.tokenizer.detokenizer import TextState

_next_seq_id = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class SpecStats:
    """Speculative decoding counters of one request (or, merged, of many)."""

    drafted_tokens: int = 0
    """Draft nodes sent to verification (every node of every tree)."""
    accepted_tokens: int = 0
    emitted_tokens: int = 0
    """Accepted plus bonus tokens actually kept (a stop condition can cut a step short)."""
    target_forwards: int = 0
    """Verify forwards of the target (the prefill is not counted)."""
    drafted_by_depth: list[int] = field(default_factory=list)
    """Steps whose tree reached depth d + 1."""
    accepted_by_depth: list[int] = field(default_factory=list)
    """Steps that accepted a node at depth d + 1."""

    def record(self, drafted: int, max_depth: int, accepted: int, emitted: int) -> None:
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        self.emitted_tokens += emitted
        self.target_forwards += 1
        _add_ones(self.drafted_by_depth, max_depth)
        _add_ones(self.accepted_by_depth, accepted)

    def merge(self, other: SpecStats) -> None:
        self.drafted_tokens += other.drafted_tokens
        self.accepted_tokens += other.accepted_tokens
        self.emitted_tokens += other.emitted_tokens
        self.target_forwards += other.target_forwards
        for mine, theirs in ((self.drafted_by_depth, other.drafted_by_depth),
                             (self.accepted_by_depth, other.accepted_by_depth)):
            mine.extend([0] * (len(theirs) - len(mine)))
            for depth, count in enumerate(theirs):
                mine[depth] += count

    @property
    def acceptance_length(self) -> float:
        """Tokens emitted per target forward: 1.0 means speculation gained nothing."""
        return self.emitted_tokens / self.target_forwards if self.target_forwards else 1.0


def _add_ones(counts: list[int], depth: int) -> None:
    counts.extend([0] * (depth - len(counts)))
    for index in range(depth):
        counts[index] += 1


@dataclass
class Sequence:
    prompt_token_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None = None
    """The request's private random stream, on the device that samples it; None without a seed."""
    text: TextState | None = None
    """The streamed text and its stop-string state; the engine gives every request one."""
    seq_id: int = field(default_factory=lambda: next(_next_seq_id))
    token_ids: list[int] = field(init=False)
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    """Tokens whose keys and values are already in the KV cache."""
    block_hashes: list[bytes] = field(default_factory=list)
    """Prefix-cache chain keys of the sequence's leading full blocks of tokens, computed as needed."""
    num_registered_blocks: int = 0
    """Leading blocks of block_table already offered to (or taken from) the prefix cache."""
    prefilled: bool = False
    """Every token but the last is in the KV cache since the sequence was last (re)admitted, so it can
    decode; a prompt, or a recompute after preemption, may take several chunked steps to get there."""
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    last_token_time: float | None = None
    draft_state: Any = None
    """The drafter's per-request state (kilotok/speculative); only the drafter reads or writes it."""
    spec_stats: SpecStats = field(default_factory=SpecStats)

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int, now: float) -> None:
        self.token_ids.append(token_id)
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now
