"""The scheduler alone on hand-made sequences, with the model's work simulated: the token budget, decode
before prefill chunks, first come first served, preemption of the newest, and lookahead slots."""

from __future__ import annotations

from kilotok.engine.block_manager import BlockManager
from kilotok.engine.scheduler import Scheduler
from kilotok.runner.decoder import ScheduledBatch
from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence, SequenceStatus

BLOCK = 4


def _scheduler(num_blocks: int, budget: int, **settings) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, BLOCK), max_num_seqs=8, max_num_batched_tokens=budget, **settings)


def _add(scheduler: Scheduler, length: int, first_token: int = 0) -> Sequence:
    seq = Sequence(list(range(first_token, first_token + length)), SamplingParams(temperature=0.0))
    scheduler.add(seq)
    return seq


def _run(batch: ScheduledBatch) -> None:
    """What the model runner and engine do to the sequences: cache the tokens, append sampled ones."""
    for seq, count, sample in zip(batch.seqs, batch.num_new_tokens, batch.samples, strict=True):
        seq.num_cached_tokens += count
        if sample:
            seq.token_ids.append(99)


def test_a_step_holds_every_decode_then_chunks_of_a_long_prompt():
    scheduler = _scheduler(num_blocks=64, budget=10)
    short = [_add(scheduler, 3, first_token=10 * n) for n in range(2)]
    _run(scheduler.schedule())
    long = _add(scheduler, 25, first_token=100)
    batch = scheduler.schedule()
    assert batch.seqs == [*short, long] and batch.num_new_tokens == [1, 1, 8]
    assert batch.samples == [True, True, False] and batch.num_decodes == 2
    assert batch.prefill_part().seqs == [long] and batch.prefill_part().num_new_tokens == [8]
    _run(batch)
    for _ in range(2):
        batch = scheduler.schedule()
        assert batch.num_new_tokens == [1, 1, 8] and batch.samples == [True, True, False]
        _run(batch)
    batch = scheduler.schedule()
    assert batch.num_new_tokens == [1, 1, 1] and batch.samples == [True, True, True]
    # The long prompt's last chunk is one token: it still goes through the prefill path, for this step.
    assert batch.num_decodes == 2 and batch.has_prefill
    _run(batch)
    assert not scheduler.schedule().has_prefill


def test_the_head_of_the_queue_is_never_overtaken():
    scheduler = _scheduler(num_blocks=9, budget=64)  # eight usable blocks
    first = _add(scheduler, 20)
    _run(scheduler.schedule())
    big, small = _add(scheduler, 16, first_token=200), _add(scheduler, 2, first_token=300)
    batch = scheduler.schedule()
    # Two blocks are left: the 16-token prompt needs four, and the 2-token one must wait behind it.
    assert batch.seqs == [first]
    assert list(scheduler.waiting) == [big, small]


def test_the_newest_sequence_is_preempted_and_requeued_first():
    released = []
    scheduler = _scheduler(num_blocks=6, budget=64, release=released.append)  # five usable blocks
    old, new = _add(scheduler, 8), _add(scheduler, 8, first_token=50)
    batch = scheduler.schedule()
    assert batch.seqs == [old, new]
    _run(batch)
    waiting = _add(scheduler, 3, first_token=90)
    # Each needs a third block for its next token and one is left: the newer one gives its blocks back.
    batch = scheduler.schedule()
    assert batch.seqs == [old]
    assert new.status is SequenceStatus.WAITING and not new.block_table and new.num_cached_tokens == 0
    assert scheduler.num_preemptions == 1
    assert list(scheduler.waiting) == [new, waiting]
    # The decoder is told, so it drops what it kept for the preempted sequence; then for a finished one.
    assert released == [new]
    scheduler.finish(old, "abort")
    assert released == [new, old]


def test_decoding_sequences_get_lookahead_slots_beside_prompt_chunks():
    scheduler = _scheduler(num_blocks=64, budget=6, lookahead_slots=3)
    first = _add(scheduler, 2)
    _run(scheduler.schedule())
    second = _add(scheduler, 10, first_token=20)
    batch = scheduler.schedule()
    assert batch.seqs == [first, second] and batch.num_decodes == 1 and batch.num_new_tokens == [1, 5]
    # Room for a draft tree written past the decoding sequence's end; the prompt chunk needs only its own.
    assert len(first.block_table) * BLOCK >= len(first) + 3
    assert len(second.block_table) == 2
