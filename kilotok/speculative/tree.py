"""Draft trees: the tokens a drafter proposes after a sequence's last sampled token (the root).

Nodes are numbered 0..n-1 in topological order (a parent before its children); parent -1 is the root.
The verify forward feeds the root then the nodes, so row 0 is the root and row i + 1 is node i. A
chain (one proposal per level, as prompt lookup makes) is the degenerate tree where parent i is i - 1.

A step's trees travel as `DraftTrees`, one tensor row per sequence, on the device where the drafter grew
them: verification builds its inputs from them there, and only the verdicts come back to the host.
`DraftTree` is one tree on the host, for drafters that find theirs there (prompt lookup) and for tests.
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

    def ancestor_mask(self, width: int) -> torch.Tensor:
        """[width, width] bool over root + nodes (+ padding): row r sees column c when c is r itself or an
        ancestor of r; the root is an ancestor of every node. Padding rows see only themselves."""
        mask = torch.eye(width, dtype=torch.bool)
        mask[: len(self) + 1, 0] = True
        for index, parent in enumerate(self.parents):
            if parent != ROOT:
                mask[index + 1] |= mask[parent + 1]
        return mask


@dataclass(frozen=True)
class DraftTrees:
    """One step's draft trees for a batch of sequences: row b holds sequence b's tree in its first
    `sizes[b]` columns (topological order, so any prefix is a tree too), padding after. The columns are
    the drafter's full tree size, whatever the trees use: verification compiles only trees that fill
    them (speculative/verify_steps.py)."""

    tokens: torch.Tensor
    """[B, N] int64 each node's token."""
    parents: torch.Tensor
    """[B, N] int64 each node's parent node, or ROOT; padding columns hold ROOT."""
    sizes: tuple[int, ...]
    """Each tree's node count, known on the host without reading the tensors."""
    max_depth: int
    """No node of any tree is deeper (an upper bound: verification gathers ancestors this many times)."""

    @classmethod
    def from_trees(cls, trees: list[DraftTree], device: torch.device | str = "cpu",
                   width: int | None = None) -> DraftTrees:
        """`width`: the columns (the drafter's tree size; default: the largest tree's)."""
        width = max((len(tree) for tree in trees), default=0) if width is None else width
        rows = [[*tree.tokens, *[0] * (width - len(tree)), *tree.parents, *[ROOT] * (width - len(tree))]
                for tree in trees]
        packed = torch.tensor(rows, dtype=torch.int64).view(len(trees), 2 * width).to(device)
        return cls(packed[:, :width], packed[:, width:], tuple(map(len, trees)),
                   max((tree.max_depth for tree in trees), default=0))

    @classmethod
    def empty(cls, batch: int, device: torch.device | str) -> DraftTrees:
        return cls.from_trees([DraftTree() for _ in range(batch)], device)

    def placed(self, rows: list[int], batch: int) -> DraftTrees:
        """These trees as rows `rows` of a batch of `batch` sequences; the other sequences get none."""
        if rows == list(range(batch)):
            return self
        index = torch.tensor(rows, device=self.tokens.device)
        tokens = self.tokens.new_zeros(batch, self.tokens.shape[1]).index_copy_(0, index, self.tokens)
        parents = self.parents.new_full((batch, self.tokens.shape[1]), ROOT).index_copy_(0, index, self.parents)
        sizes = [0] * batch
        for row, size in zip(rows, self.sizes, strict=True):
            sizes[row] = size
        return DraftTrees(tokens, parents, tuple(sizes), self.max_depth)

    def fitted(self, max_nodes: list[int]) -> DraftTrees:
        """Each tree cut to its first `max_nodes[b]` nodes (the columns stay)."""
        sizes = tuple(min(size, limit) for size, limit in zip(self.sizes, max_nodes, strict=True))
        return DraftTrees(self.tokens, self.parents, sizes, min(self.max_depth, max(sizes, default=0)))

    @property
    def full(self) -> bool:
        """Whether the largest tree fills the columns: the shape every step of the drafter's size has."""
        return max(self.sizes, default=0) == self.tokens.shape[1]
