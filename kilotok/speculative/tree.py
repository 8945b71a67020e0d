"""A draft tree: the tokens a drafter proposes after a sequence's last sampled token (the root).

Nodes are numbered 0..n-1 in topological order (a parent before its children); parent -1 is the root.
The verify forward feeds the root then the nodes, so row 0 is the root and row i + 1 is node i. A
chain (one proposal per level, as prompt lookup makes) is the degenerate tree where parent i is i - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

ROOT = -1


@dataclass
class DraftTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(init=False)
    """Depth of each node: children of the root have depth 1."""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.parents)} parents")
        self.depths = []
        for index, parent in enumerate(self.parents):
            if not ROOT <= parent < index:
                raise ValueError(f"node {index} has parent {parent}: parents must come before their children")
            self.depths.append(1 if parent == ROOT else self.depths[parent] + 1)

    @classmethod
    def chain(cls, tokens: list[int]) -> DraftTree:
        return cls(list(tokens), list(range(-1, len(tokens) - 1)))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def max_depth(self) -> int:
        return max(self.depths, default=0)

    def children(self, parent: int) -> list[int]:
        """Nodes whose parent is `parent` (ROOT for the root's), in node order."""
        return [i for i, p in enumerate(self.parents) if p == parent]

    def truncated(self, max_nodes: int, max_depth: int) -> DraftTree:
        """The first `max_nodes` nodes no deeper than `max_depth`; topological order keeps it a tree."""
        kept: list[int] = []
        for index, depth in enumerate(self.depths):
            if len(kept) < max_nodes and depth <= max_depth and (self.parents[index] in kept
                                                                 or self.parents[index] == ROOT):
                kept.append(index)
        renumber = {old: new for new, old in enumerate(kept)}
        renumber[ROOT] = ROOT
        return DraftTree([self.tokens[i] for i in kept], [renumber[self.parents[i]] for i in kept])

    def ancestor_mask(self, width: int) -> torch.Tensor:
        """[width, width] bool over root + nodes (+ padding): row r sees column c when c is r itself or an
        ancestor of r; the root is an ancestor of every node. Padding rows see only themselves."""
        mask = torch.eye(width, dtype=torch.bool)
        mask[: len(self) + 1, 0] = True
        for index, parent in enumerate(self.parents):
            if parent != ROOT:
                mask[index + 1] |= mask[parent + 1]
        return mask
