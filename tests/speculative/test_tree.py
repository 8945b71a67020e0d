"""DraftTree and DraftTrees bookkeeping against hand-worked trees."""

from __future__ import annotations

import pytest
import torch

from kilotok.speculative.tree import DraftTree, DraftTrees

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


def test_a_batch_of_trees_pads_places_and_fits_its_rows():
    trees = DraftTrees.from_trees([TREE, DraftTree.chain([7, 8])])
    assert trees.tokens.tolist() == [[10, 11, 12, 13, 14], [7, 8, 0, 0, 0]]
    assert trees.parents.tolist() == [[-1, -1, 0, 1, 2], [-1, 0, -1, -1, -1]]
    assert (trees.sizes, trees.max_depth) == ((5, 2), 3)
    # Rows 0 and 2 of a batch of 3; the sequence in between has no tree.
    placed = trees.placed([0, 2], 3)
    assert placed.tokens.tolist() == [[10, 11, 12, 13, 14], [0] * 5, [7, 8, 0, 0, 0]]
    assert placed.parents[1].tolist() == [-1] * 5 and placed.sizes == (5, 0, 2)
    assert trees.placed([0, 1], 2) is trees
    # A prefix in topological order is a tree: fitting keeps one, and the columns.
    fitted = placed.fitted([3, 4, 1])
    assert fitted.sizes == (3, 0, 1) and fitted.tokens is placed.tokens and not fitted.full
    assert fitted.max_depth == 3 and placed.fitted([0, 0, 0]).sizes == (0, 0, 0)
    assert placed.full and placed.fitted([5, 0, 0]).full
    # Columns for the drafter's tree size, wider than the trees: not full.
    assert DraftTrees.from_trees([DraftTree.chain([1])], width=3).tokens.tolist() == [[1, 0, 0]]
    assert DraftTrees.empty(2, "cpu").tokens.shape == (2, 0)


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-2]])
def test_parents_must_come_first(parents):
    with pytest.raises(ValueError, match="parent"):
        DraftTree([1] * len(parents), parents)
