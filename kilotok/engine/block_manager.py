"""Fixed-size KV-cache blocks: reference-counted, shared through the prefix cache, and each sequence's
block table.

Block 0 is never handed out: padded rows of a static-shape decode batch write their throw-away keys
and values there. A sequence only ever writes at positions from its num_cached_tokens on, and a block
is shared only once every one of its positions is below that mark in the sequence that computed it, so
shared blocks are read-only.

The prefix cache finds full KV blocks again by the tokens that produced them. A block's key is a chain
hash: the hash of its parent block's key and its own token ids, so equal keys mean equal token prefixes
up to and including the block (the positions, and so the keys and values, then agree too). A cached
block stays in the table while sequences use it; once unreferenced it is *evictable*: still found by
lookups, but handed out again (least recently released first) when the block manager runs out of
never-cached free blocks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence as TokenIds

from kilotok.runner.step_inputs import PADDING_BLOCK
from kilotok.sequence import Sequence

BlockHash = bytes


def chain_hash(parent: BlockHash | None, token_ids: TokenIds[int]) -> BlockHash:
    """The key of a full block: a cryptographic hash, so that two different prefixes never share KV."""
    digest = hashlib.sha256(parent or b"")
    digest.update(b"".join(token.to_bytes(8, "little", signed=True) for token in token_ids))
    return digest.digest()


def block_hashes(token_ids: TokenIds[int], block_size: int, known: list[BlockHash], num_blocks: int) -> None:
    """Extend `known` (the chain keys of the first blocks of `token_ids`) to `num_blocks` full blocks."""
    for index in range(len(known), num_blocks):
        parent = known[-1] if known else None
        known.append(chain_hash(parent, token_ids[index * block_size : (index + 1) * block_size]))


class PrefixCache:
    """Maps chain keys to block ids and keeps the least-recently-released order of unreferenced ones.
    Reference counts live in the block manager; it tells the cache when a block gains its first user
    (`reuse`) or loses its last (`release`)."""

    def __init__(self) -> None:
        self.block_of: dict[BlockHash, int] = {}
        self.hash_of: dict[int, BlockHash] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()
        """Cached blocks no sequence uses, least recently released first."""

    @property
    def num_evictable(self) -> int:
        return len(self.evictable)

    def lookup(self, key: BlockHash) -> int | None:
        return self.block_of.get(key)

    def is_cached(self, block: int) -> bool:
        return block in self.hash_of

    def is_evictable(self, block: int) -> bool:
        return block in self.evictable

    def insert(self, key: BlockHash, block: int) -> bool:
        """Record that `block` holds the KV of the chain `key`. False when another block already does
        (two sequences computed the same prefix at once): that block stays the cached one."""
        if key in self.block_of or block in self.hash_of:
            return False
        self.block_of[key] = block
        self.hash_of[block] = key
        return True

    def reuse(self, block: int) -> None:
        """An unreferenced cached block has a user again: it may no longer be evicted."""
        self.evictable.pop(block, None)

    def release(self, block: int) -> None:
        """A cached block lost its last user: it becomes the most recently released evictable block."""
        self.evictable[block] = None

    def evict(self) -> int:
        """Forget the least recently released unreferenced block and return it for new use."""
        block, _ = self.evictable.popitem(last=False)
        del self.block_of[self.hash_of.pop(block)]
        return block


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free_blocks: deque[int] = deque(b for b in range(num_blocks) if b != PADDING_BLOCK)
        """Unreferenced blocks that hold nothing worth keeping."""
        self.ref_counts = [0] * num_blocks
        self.prefix_cache = PrefixCache() if enable_prefix_caching else None
        self.prefix_query_tokens = 0
        """Tokens of every sequence admitted while the prefix cache was on (cumulative)."""
        self.prefix_hit_tokens = 0
        """Of those, tokens whose KV came from the prefix cache instead of being computed (cumulative)."""

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now: never-cached free ones and evictable cached ones."""
        evictable = self.prefix_cache.num_evictable if self.prefix_cache else 0
        return len(self.free_blocks) + evictable

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """The cached blocks holding the leading full blocks of a sequence that has no blocks yet. The
        last token is always left to compute, since its logits give the next token."""
        if self.prefix_cache is None or seq.block_table:
            return []
        num_full = (len(seq) - 1) // self.block_size
        block_hashes(seq.token_ids, self.block_size, seq.block_hashes, num_full)
        blocks = []
        for key in seq.block_hashes[:num_full]:
            block = self.prefix_cache.lookup(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def can_admit(self, seq: Sequence, num_tokens: int, prefix: list[int]) -> bool:
        """Whether `seq` (no blocks yet) can start with `prefix` reused and room for `num_tokens`."""
        fresh = max(0, self.blocks_needed(num_tokens) - len(prefix))
        revived = sum(1 for block in prefix if self.prefix_cache.is_evictable(block))
        return fresh + revived <= self.num_free_blocks

    def admit(self, seq: Sequence, num_tokens: int, prefix: list[int]) -> None:
        """Give a sequence with no blocks the cached `prefix` (its KV counts as computed) and fresh blocks
        up to `num_tokens` tokens; callers check can_admit first."""
        if self.prefix_cache is not None:
            self.prefix_query_tokens += len(seq)
            self.prefix_hit_tokens += len(prefix) * self.block_size
        # The prefix blocks are claimed before any fresh block is taken, so none of them can be evicted
        # to make room for the rest.
        for block in prefix:
            if self.ref_counts[block] == 0:
                self.prefix_cache.reuse(block)
            self.ref_counts[block] += 1
        seq.block_table = list(prefix)
        seq.num_cached_tokens = len(prefix) * self.block_size
        seq.num_registered_blocks = len(prefix)
        self.grow(seq, num_tokens)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Give `seq` enough blocks to hold `num_tokens` tokens in all (callers check can_grow first)."""
        for _ in range(self.blocks_needed(num_tokens) - len(seq.block_table)):
            block = self.free_blocks.popleft() if self.free_blocks else self.prefix_cache.evict()
            self.ref_counts[block] = 1
            seq.block_table.append(block)

    def register_full_blocks(self, seq: Sequence) -> None:
        """Offer the sequence's newly completed blocks to the prefix cache. Only tokens both computed and
        kept count: a speculative step may have cached K/V for tokens a stop rule then cut off."""
        if self.prefix_cache is None:
            return
        num_full = min(seq.num_cached_tokens, len(seq), len(seq.block_table) * self.block_size) // self.block_size
        if num_full <= seq.num_registered_blocks:
            return
        block_hashes(seq.token_ids, self.block_size, seq.block_hashes, num_full)
        for index in range(seq.num_registered_blocks, num_full):
            self.prefix_cache.insert(seq.block_hashes[index], seq.block_table[index])
        seq.num_registered_blocks = num_full

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's blocks; cached ones stay findable until their space is needed."""
        self.register_full_blocks(seq)
        # Tail blocks are released first, so they are evicted before the more widely shared head blocks.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] > 0:
                continue
            if self.prefix_cache is not None and self.prefix_cache.is_cached(block):
                self.prefix_cache.release(block)
            else:
                self.free_blocks.append(block)
        seq.block_table.clear()
        seq.num_cached_tokens = 0
        seq.num_registered_blocks = 0
