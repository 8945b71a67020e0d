"""Chooses which sequences run in the next step: first come, first served; prefill before decode.

A step is either a prefill (new prompts, up to a token budget) or a decode of every running sequence.
When the cache runs out of blocks, the most recently admitted sequence is preempted: its blocks are
freed and it is queued again at the front, to recompute its tokens later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kilotok.engine.block_manager import BlockManager
from kilotok.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    is_prefill: bool


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 lookahead_slots: int = 0, max_model_len: int | None = None) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # Speculative decoding writes a draft tree past the sequence's end before it knows what stays.
        self.lookahead_slots = lookahead_slots
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        prefill = self._schedule_prefill()
        if prefill:
            return ScheduledBatch(prefill, is_prefill=True)
        decode = self._schedule_decode()
        return ScheduledBatch(decode, is_prefill=False) if decode else None

    def _schedule_prefill(self) -> list[Sequence]:
        scheduled: list[Sequence] = []
        num_tokens = 0
        while self.waiting and len(self.running) + len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            new_tokens = len(seq) - seq.num_cached_tokens
            # A single prompt larger than the budget still runs alone, so it never waits forever.
            over_budget = scheduled and num_tokens + new_tokens > self.max_num_batched_tokens
            if over_budget or not self.block_manager.can_grow(seq, len(seq)):
                break
            self.waiting.popleft()
            self.block_manager.grow(seq, len(seq))
            seq.status = SequenceStatus.RUNNING
            scheduled.append(seq)
            num_tokens += new_tokens
        self.running.extend(scheduled)
        return scheduled

    def _schedule_decode(self) -> list[Sequence]:
        scheduled: list[Sequence] = []
        while self.running:
            seq = self.running.popleft()
            needed = self._decode_slots(seq)
            while not self.block_manager.can_grow(seq, needed):
                victim = self.running.pop() if self.running else seq
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                self.block_manager.grow(seq, needed)
                scheduled.append(seq)
        self.running.extend(scheduled)
        return scheduled

    def _decode_slots(self, seq: Sequence) -> int:
        wanted = len(seq) + self.lookahead_slots
        return wanted if self.max_model_len is None else max(len(seq), min(wanted, self.max_model_len))

    def preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.block_manager.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
