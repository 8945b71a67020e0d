"""Draft trees laid out as verify rows by hand (DraftTree's own bookkeeping), for tests of acceptance."""

from __future__ import annotations

import torch

from kilotok.speculative.tree import DraftTree
from kilotok.speculative.verify import TreeRows


def tree_rows(trees: list[DraftTree], width: int, device: torch.device | str = "cpu") -> TreeRows:
    """Row 0 each tree's root (token 0), row i + 1 its node i, then padding rows up to `width`."""
    def padded(values: list[int]) -> list[int]:
        return [0, *values] + [0] * (width - 1 - len(values))

    return TreeRows(
        tokens=torch.tensor([padded(tree.tokens) for tree in trees], device=device),
        ancestors=torch.stack([tree.ancestor_mask(width) for tree in trees]).to(device),
        parents=torch.tensor([padded([parent + 1 for parent in tree.parents]) for tree in trees], device=device),
        depths=torch.tensor([padded(tree.depths) for tree in trees], device=device),
    )
