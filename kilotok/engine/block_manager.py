"""Fixed-size KV-cache blocks: a free list, and each sequence's block table.

Block 0 is never handed out: padded rows of a static-shape decode batch write their throw-away keys
and values there.
"""

from __future__ import annotations

from collections import deque

from kilotok.engine.sequence import Sequence

PADDING_BLOCK = 0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free_blocks: deque[int] = deque(range(1, num_blocks))

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) <= len(self.free_blocks)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Give `seq` enough blocks to hold `num_tokens` tokens in all (callers check can_grow first)."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        for _ in range(missing):
            seq.block_table.append(self.free_blocks.popleft())

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= len(self.free_blocks)

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table.clear()
        seq.num_cached_tokens = 0
