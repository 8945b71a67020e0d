"""The prefix cache: full KV blocks found again by the tokens that produced them.

A block's key is a chain hash: the hash of its parent block's key and its own token ids, so equal keys
mean equal token prefixes up to and including the block (the positions, and so the keys and values,
then agree too). A cached block stays in the table while sequences use it; once unreferenced it is
*evictable*: still found by lookups, but handed out again (least recently released first) when the
block manager runs out of never-cached free blocks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

BlockHash = bytes


def chain_hash(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """The key of a full block: a cryptographic hash, so that two different prefixes never share KV."""
    digest = hashlib.sha256(parent or b"")
    digest.update(b"".join(token.to_bytes(8, "little", signed=True) for token in token_ids))
    return digest.digest()


def block_hashes(token_ids: Sequence[int], block_size: int, known: list[BlockHash], num_blocks: int) -> None:
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
