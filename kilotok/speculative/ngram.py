"""Prompt lookup: propose the continuation of the most recent earlier occurrence of the context's tail.

Free to compute and strong wherever the answer repeats its input (code edits, summaries, extraction).
"""

from __future__ import annotations

import torch

from kilotok.sequence import Sequence
from kilotok.speculative.policy import TreeShape
from kilotok.speculative.tree import DraftTree, DraftTrees


class NgramDrafter:
    aux_layer_ids: tuple[int, ...] = ()

    def __init__(self, min_ngram: int, max_ngram: int, num_tokens: int) -> None:
        self.min_ngram = min_ngram
        self.max_ngram = max_ngram
        self.num_tokens = num_tokens

    def propose(self, seqs: list[Sequence], shape: TreeShape) -> DraftTrees:
        length = min(shape.depth, shape.tree_size)
        return DraftTrees.from_trees([DraftTree.chain(self.lookup(seq.token_ids)[:length]) for seq in seqs],
                                     width=length)

    def lookup(self, tokens: list[int]) -> list[int]:
        """The tokens that followed the latest earlier match of the longest matching tail (longest first,
        max_ngram down to min_ngram); [] when no tail occurs earlier."""
        for size in range(min(self.max_ngram, len(tokens) - 1), self.min_ngram - 1, -1):
            tail = tokens[-size:]
            # A match must end before the tail itself starts repeating at the very end.
            for start in range(len(tokens) - size - 1, -1, -1):
                if tokens[start : start + size] == tail:
                    return tokens[start + size : start + size + self.num_tokens]
        return []

    def prefilled(self, seq: Sequence, start: int, features: torch.Tensor | None, next_token: int | None) -> None:
        """The sequence's own tokens are all prompt lookup reads."""

    def verified(self, seq: Sequence, tokens: list[int], features: torch.Tensor | None) -> None:
        """As `prefilled`: nothing to keep."""

    def release(self, seq: Sequence) -> None:
        """Nothing kept, nothing to drop."""

    def warm_up(self, seqs: list[Sequence], shape: TreeShape) -> None:
        """Prompt lookup runs on the host: nothing to compile."""
