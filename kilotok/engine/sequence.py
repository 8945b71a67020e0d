"""One request as the engine tracks it: its tokens, its KV blocks, its state and its timings."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

import torch

from kilotok.sampling_params import SamplingParams
from kilotok.speculative.metrics import SpecStats

_next_seq_id = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    prompt_token_ids: list[int]
    params: SamplingParams
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
    generator: torch.Generator | None = None
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    last_token_time: float | None = None
    spec_stats: SpecStats = field(default_factory=SpecStats)

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

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
