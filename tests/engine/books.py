"""Checks of the engine's books that hold after every operation, for the property tests: every usable KV
block is in exactly one state, reference counts match the block tables, and blocks are shared only as the
prefix cache allows."""

from __future__ import annotations

from kilotok.engine.block_manager import PADDING_BLOCK, BlockManager
from kilotok.engine.scheduler import Scheduler
from kilotok.sequence import Sequence, SequenceStatus

Holders = dict[int, list[tuple[Sequence, int]]]
"""Block id -> (sequence, index in its block table) of every running sequence that holds it."""


def check_blocks(manager: BlockManager, scheduler: Scheduler, seqs: list[Sequence]) -> None:
    """The books of `manager` and `scheduler`, with `seqs` every request submitted so far."""
    holders = _check_statuses(scheduler, seqs)
    _check_block_states(manager, holders)
    for block, held in holders.items():
        if len(held) > 1:
            cache = manager.prefix_cache
            assert cache is not None and cache.is_cached(block), f"block {block} shared but not cached"
            # Shared blocks are read-only: full, and computed in every sequence that holds them.
            assert all((index + 1) * manager.block_size <= seq.num_cached_tokens for seq, index in held)


def check_idle(manager: BlockManager) -> None:
    """No request holds a block: every usable block can be handed out again."""
    assert not any(manager.ref_counts)
    assert manager.num_free_blocks == manager.num_usable_blocks


def _check_statuses(scheduler: Scheduler, seqs: list[Sequence]) -> Holders:
    running = scheduler.running
    assert len(running) <= scheduler.max_num_seqs
    assert all(seq.status is SequenceStatus.RUNNING for seq in running)
    assert all(seq.status is SequenceStatus.WAITING for seq in scheduler.waiting)
    holders: Holders = {}
    for seq in running:
        assert len(set(seq.block_table)) == len(seq.block_table), "a block twice in one table"
        for index, block in enumerate(seq.block_table):
            holders.setdefault(block, []).append((seq, index))
    for seq in seqs:
        if seq.status is not SequenceStatus.RUNNING:
            assert not seq.block_table and seq.num_cached_tokens == 0
    return holders


def _check_block_states(manager: BlockManager, holders: Holders) -> None:
    """Free (never cached), evictable (cached, unreferenced) or held: each usable block is exactly one."""
    cache = manager.prefix_cache
    evictable = set(cache.evictable) if cache else set()
    free = list(manager.free_blocks)
    assert len(set(free)) == len(free)
    assert not set(free) & evictable and not (set(free) | evictable) & holders.keys()
    assert set(free) | evictable | holders.keys() == set(range(manager.num_blocks)) - {PADDING_BLOCK}
    for block in range(manager.num_blocks):
        assert manager.ref_counts[block] == len(holders.get(block, [])), block
    if cache:
        assert {block: key for key, block in cache.block_of.items()} == cache.hash_of
        assert all(cache.is_cached(block) for block in evictable)
