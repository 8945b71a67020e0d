"""DraftTree bookkeeping against hand-worked trees."""

from __future__ import annotations

import pytest
import torch

from kilotok.speculative.tree import DraftTree

# root -> a(0) -> c(2) -> e(4); root -> b(1) -> d(3)
TREE = DraftTree([10, 11, 12, 13, 14], [-1, -1, 0, 1, 2])


def test_depths_children_and_paths():
    assert TREE.depths == [1, 1, 2, 2, 3]
    assert TREE.max_depth == 3
    assert TREE.children(-1) == [0, 1]
    assert TREE.children(1) == [3]


def test_ancestor_mask_includes_root_and_self_only():
    mask = TREE.ancestor_mask(width=7)
    expected = torch.tensor([
        # root a  b  c  d  e  pad
        [1, 0, 0, 0, 0, 0, 0],  # root
        [1, 1, 0, 0, 0, 0, 0],  # a
        [1, 0, 1, 0, 0, 0, 0],  # b
        [1, 1, 0, 1, 0, 0, 0],  # c
        [1, 0, 1, 0, 1, 0, 0],  # d
        [1, 1, 0, 1, 0, 1, 0],  # e
        [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_chain_is_a_degenerate_tree():
    chain = DraftTree.chain([5, 6, 7])
    assert chain.parents == [-1, 0, 1]
    assert chain.depths == [1, 2, 3]
    assert DraftTree.chain([]).max_depth == 0


def test_truncation_keeps_a_tree():
    assert TREE.truncated(max_nodes=3, max_depth=9) == DraftTree([10, 11, 12], [-1, -1, 0])
    # Dropping by depth renumbers parents of the nodes that stay.
    shallow = TREE.truncated(max_nodes=9, max_depth=2)
    assert (shallow.tokens, shallow.parents) == ([10, 11, 12, 13], [-1, -1, 0, 1])
    assert len(TREE.truncated(max_nodes=0, max_depth=3)) == 0


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-2]])
def test_parents_must_come_first(parents):
    with pytest.raises(ValueError, match="parent"):
        DraftTree([1] * len(parents), parents)
