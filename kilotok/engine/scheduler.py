"""Chooses the work of the next step: continuous batching with chunked prefill under a token budget.

Every step is planned afresh, so requests join and leave the running batch at any step. A step holds
up to `max_num_batched_tokens` new tokens: first the next token of every decoding sequence, then chunks
of the prompts still being prefilled (oldest first), then chunks of waiting prompts, admitted first
come, first served while there is budget, room in the batch and KV blocks. A prompt longer than what is
left of the budget is prefilled over several steps while the others keep decoding; a waiting prompt
whose leading blocks are in the prefix cache starts after them.

When the cache runs out of blocks, the most recently admitted sequence not yet given work this step is
preempted: its blocks are freed (full ones stay in the prefix cache) and it is queued again at the
front, to recompute its tokens later.

`postprocess` is the one place a step's results change sequences: it moves their cache marks on,
appends their tokens through the stop rules, records their counters and finishes them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from kilotok.engine.block_manager import BlockManager
from kilotok.engine.output import OutputProcessor
from kilotok.runner.decoder import ScheduledBatch, StepResult
from kilotok.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 lookahead_slots: int = 0, max_model_len: int | None = None,
                 release: Callable[[Sequence], None] | None = None) -> None:
        """`release`: told of every sequence whose blocks are freed (finished or preempted), so that the
        decoder drops what it keeps for it (`Decoder.release`)."""
        self.block_manager = block_manager
        self.release = release or (lambda seq: None)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.lookahead_slots = lookahead_slots
        """KV slots past a decoding sequence's end that the engine's decoder may write in one step."""
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        """Admitted sequences, oldest admission first."""
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        for seq in self.running:
            self.block_manager.register_full_blocks(seq)
        plan = self._plan(self.max_num_batched_tokens)
        return self._batch(plan) if plan else None

    def _plan(self, budget: int) -> list[tuple[Sequence, int]]:
        """(sequence, new tokens) pairs under `budget`: running sequences, decoding ones first, then
        waiting ones."""
        ordered = [seq for seq in self.running if seq.prefilled] + [seq for seq in self.running if not seq.prefilled]
        plan: list[tuple[Sequence, int]] = []
        planned: set[int] = set()
        for seq in ordered:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(len(seq) - seq.num_cached_tokens, budget)
            if self._reserve(seq, self._slots(seq, num_new), planned):
                plan.append((seq, num_new))
                planned.add(seq.seq_id)
                budget -= num_new
        self._admit_waiting(plan, budget)
        return plan

    def _admit_waiting(self, plan: list[tuple[Sequence, int]], budget: int) -> None:
        manager = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            prefix = manager.cached_prefix(seq)
            num_cached = len(prefix) * manager.block_size
            num_new = min(len(seq) - num_cached, budget)
            if not manager.can_admit(seq, num_cached + num_new, prefix):
                break  # first come, first served: no later request overtakes this one
            self.waiting.popleft()
            manager.admit(seq, num_cached + num_new, prefix)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            plan.append((seq, num_new))
            budget -= num_new

    def _slots(self, seq: Sequence, num_new: int) -> int:
        end = seq.num_cached_tokens + num_new
        if not seq.prefilled or not self.lookahead_slots:
            return end
        wanted = len(seq) + self.lookahead_slots
        return wanted if self.max_model_len is None else max(len(seq), min(wanted, self.max_model_len))

    def _reserve(self, seq: Sequence, num_slots: int, planned: set[int]) -> bool:
        """Grow `seq` to `num_slots`, preempting the newest sequences not planned for this step until it
        fits; False if `seq` itself had to go."""
        while not self.block_manager.can_grow(seq, num_slots):
            victim = next((s for s in reversed(self.running) if s is not seq and s.seq_id not in planned), seq)
            self.preempt(victim)
            if victim is seq:
                return False
        self.block_manager.grow(seq, num_slots)
        return True

    def _batch(self, plan: list[tuple[Sequence, int]]) -> ScheduledBatch:
        seqs = [seq for seq, _ in plan]
        num_new = [count for _, count in plan]
        samples = [seq.num_cached_tokens + count == len(seq) for seq, count in plan]
        # _plan puts the decoding sequences first.
        num_decodes = sum(1 for seq in seqs if seq.prefilled)
        for seq, sample in zip(seqs, samples, strict=True):
            seq.prefilled = seq.prefilled or sample
        return ScheduledBatch(seqs, num_new, samples, num_decodes)

    def preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self.block_manager.free(seq)
        self.release(seq)
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        seq.prefilled = False
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.block_manager.free(seq)
        self.release(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def postprocess(self, batch: ScheduledBatch, results: list[StepResult], outputs: OutputProcessor) -> None:
        """Apply one step's results: move each sequence's cache mark on, append its new tokens one at a time
        (so a stop rule cuts a speculative step short exactly where plain decoding would have stopped),
        record its speculation counters and finish it when a stop rule says so."""
        now = time.perf_counter()
        for seq, result in zip(batch.seqs, results, strict=True):
            seq.num_cached_tokens += result.num_computed
            emitted_before = seq.num_output_tokens
            for token_id in result.tokens:
                reason = outputs.append(seq, token_id, now)
                if reason is not None:
                    self.finish(seq, reason)
                    break
            if result.draft is not None:
                draft = result.draft
                seq.spec_stats.record(draft.drafted, draft.max_depth, draft.accepted,
                                      seq.num_output_tokens - emitted_before)
