"""The block manager and prefix cache alone, on hand-made sequences: chain hashes, reference counts,
LRU eviction and the counters, checked against what each step should do by construction."""

from __future__ import annotations

import hashlib

import pytest

from kilotok.engine.block_manager import PADDING_BLOCK, BlockManager, chain_hash
from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence

BLOCK = 4


def _seq(token_ids: list[int]) -> Sequence:
    return Sequence(list(token_ids), SamplingParams(temperature=0.0))


def _run_prompt(manager: BlockManager, seq: Sequence) -> list[int]:
    """Admit `seq` with whatever the cache has, and mark its whole prompt computed as a step would."""
    prefix = manager.cached_prefix(seq)
    assert manager.can_admit(seq, len(seq), prefix)
    manager.admit(seq, len(seq), prefix)
    assert seq.num_cached_tokens == len(prefix) * manager.block_size
    seq.num_cached_tokens = len(seq)
    manager.register_full_blocks(seq)
    return prefix


def _assert_idle(manager: BlockManager) -> None:
    assert manager.num_free_blocks == manager.num_usable_blocks
    assert not any(manager.ref_counts)


def _int64s(*values: int) -> bytes:
    return b"".join(value.to_bytes(8, "little", signed=True) for value in values)


def test_chain_hash_is_sha256_of_parent_and_tokens():
    first = chain_hash(None, [1, 2])
    assert first == hashlib.sha256(_int64s(1, 2)).digest()
    assert chain_hash(first, [3, 4]) == hashlib.sha256(first + _int64s(3, 4)).digest()
    # The same block after a different parent is a different key.
    assert chain_hash(chain_hash(None, [9, 9]), [3, 4]) != chain_hash(first, [3, 4])


def test_shared_prefix_is_reused_and_counted():
    manager = BlockManager(num_blocks=16, block_size=BLOCK)
    first = _seq(list(range(10)))  # two full blocks and two tokens
    assert _run_prompt(manager, first) == []
    second = _seq(list(range(8)) + [50, 51, 52])
    prefix = _run_prompt(manager, second)
    assert prefix == first.block_table[:2]
    assert second.block_table[:2] == prefix and second.block_table[2] not in first.block_table
    assert [manager.ref_counts[b] for b in prefix] == [2, 2]
    assert (manager.prefix_query_tokens, manager.prefix_hit_tokens) == (21, 8)
    assert PADDING_BLOCK not in first.block_table + second.block_table
    manager.free(first)
    assert [manager.ref_counts[b] for b in prefix] == [1, 1]
    manager.free(second)
    _assert_idle(manager)


def test_last_token_is_always_computed():
    manager = BlockManager(num_blocks=16, block_size=BLOCK)
    first = _seq(list(range(8)))
    _run_prompt(manager, first)
    manager.free(first)
    again = _seq(list(range(8)))
    # Both blocks are cached, but the last token's logits are needed: only the first block is reused.
    assert len(_run_prompt(manager, again)) == 1
    assert manager.prefix_hit_tokens == BLOCK


def test_a_different_early_token_breaks_the_chain():
    manager = BlockManager(num_blocks=16, block_size=BLOCK)
    first = _seq(list(range(12)))
    _run_prompt(manager, first)
    other = _seq([99] + list(range(1, 12)))
    assert manager.cached_prefix(other) == []


def test_unreferenced_blocks_are_evicted_least_recently_released_first():
    manager = BlockManager(num_blocks=7, block_size=BLOCK)  # six usable blocks
    old, new = _seq(list(range(8)) + [0]), _seq(list(range(100, 108)) + [0])
    for seq in (old, new):
        _run_prompt(manager, seq)
    old_blocks, new_blocks = old.block_table[:2], new.block_table[:2]
    manager.free(old)
    manager.free(new)
    assert manager.num_free_blocks == 6 and manager.prefix_cache.num_evictable == 4
    # Two never-cached blocks are free: they go first, and every cached block is still found.
    filler = _seq([7] * 8)
    manager.admit(filler, 8, [])
    assert manager.cached_prefix(_seq(list(range(8)) + [1])) == old_blocks
    # The next blocks come from the cache, the older request's tail block first.
    manager.grow(filler, 12)
    assert filler.block_table[-1] == old_blocks[1]
    assert manager.cached_prefix(_seq(list(range(8)) + [1])) == old_blocks[:1]
    assert manager.cached_prefix(_seq(list(range(100, 108)) + [1])) == new_blocks
    manager.free(filler)
    _assert_idle(manager)


def test_reusing_a_cached_block_protects_it_and_refreshes_its_age():
    manager = BlockManager(num_blocks=6, block_size=BLOCK)  # five usable blocks
    old, new = _seq(list(range(4)) + [0]), _seq(list(range(100, 104)) + [0])
    _run_prompt(manager, old)
    shared = old.block_table[0]
    manager.free(old)
    _run_prompt(manager, new)
    manager.free(new)
    reuser = _seq(list(range(4)) + [5])
    assert _run_prompt(manager, reuser) == [shared]
    assert manager.ref_counts[shared] == 1 and not manager.prefix_cache.is_evictable(shared)
    # Every other block is handed out: the block in use is never taken, the other cached one is.
    hog = _seq([7] * 12)
    assert manager.can_grow(hog, 12) and not manager.can_grow(hog, 16)
    manager.admit(hog, 12, [])
    assert shared not in hog.block_table
    assert manager.cached_prefix(_seq(list(range(100, 104)) + [1])) == []
    manager.free(reuser)
    manager.free(hog)
    assert manager.cached_prefix(_seq(list(range(4)) + [1])) == [shared]
    _assert_idle(manager)


def test_admission_counts_revived_blocks_against_free_space():
    manager = BlockManager(num_blocks=4, block_size=BLOCK)  # three usable blocks
    first = _seq(list(range(8)) + [0])
    _run_prompt(manager, first)
    manager.free(first)
    assert manager.num_free_blocks == 3
    second = _seq(list(range(8)) + [1])
    prefix = manager.cached_prefix(second)
    assert len(prefix) == 2
    assert manager.can_admit(second, 12, prefix) and not manager.can_admit(second, 16, prefix)


def test_disabled_cache_reuses_nothing_and_counts_nothing():
    manager = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=False)
    for _ in range(2):
        seq = _seq(list(range(12)))
        assert _run_prompt(manager, seq) == []
        manager.free(seq)
    assert (manager.prefix_query_tokens, manager.prefix_hit_tokens) == (0, 0)
    _assert_idle(manager)


@pytest.mark.parametrize("num_blocks", [1, 0])
def test_too_small_a_cache_is_refused(num_blocks):
    with pytest.raises(ValueError, match="at least 2 blocks"):
        BlockManager(num_blocks, BLOCK)
