"""The tree a draft keeps, chosen on the device, against the rule written out on the host: the best
cumulative scores, ties to the shallower then the earlier candidate, renumbered in level order."""

from __future__ import annotations

import pytest
import torch

from kilotok.speculative.eagle3.head_steps import best_tree
from kilotok.speculative.tree import ROOT, DraftTree


def _expansion(depth: int, topk: int, generator: torch.Generator) -> tuple[list[int], list[float], list[int]]:
    """Candidates shaped as an expansion makes them: level by level, each level's frontier (its parent
    level's best top-k) times top-k children, with scores the parent's plus a log-probability. Log-
    probabilities come from a small set that includes 0, so scores tie, across levels too."""
    steps = [0.0, -0.5, -1.0, -1.5]
    tokens, scores, parents = [], [], []
    level = []
    for _ in range(topk):
        level.append(len(tokens))
        tokens.append(int(torch.randint(0, 50, (), generator=generator)))
        scores.append(steps[int(torch.randint(0, 4, (), generator=generator))])
        parents.append(ROOT)
    for _ in range(1, depth):
        frontier = sorted(level, key=lambda i: (-scores[i], i))[:topk]
        level = []
        for parent in frontier:
            for _ in range(topk):
                level.append(len(tokens))
                tokens.append(int(torch.randint(0, 50, (), generator=generator)))
                scores.append(scores[parent] + steps[int(torch.randint(0, 4, (), generator=generator))])
                parents.append(parent)
    return tokens, scores, parents


def _host_rule(tokens: list[int], scores: list[float], parents: list[int], tree_size: int) -> DraftTree:
    depths = [1 if parent == ROOT else 0 for parent in parents]
    for i, parent in enumerate(parents):
        depths[i] = 1 if parent == ROOT else depths[parent] + 1
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], depths[i], i))
    chosen = sorted(ranked[:tree_size], key=lambda i: (depths[i], i))
    index_of = {old: new for new, old in enumerate(chosen)} | {ROOT: ROOT}
    return DraftTree([tokens[i] for i in chosen], [index_of[parents[i]] for i in chosen])


@pytest.mark.parametrize(("depth", "topk", "tree_size"), [(1, 3, 2), (3, 2, 5), (4, 3, 10), (3, 3, 40)])
def test_the_best_nodes_by_score_form_a_tree_in_level_order(depth, topk, tree_size):
    """Twenty expansions chosen from at once, as a batch of sequences: each row by its own rule."""
    generator = torch.Generator().manual_seed(depth * 10 + topk)
    expansions = [_expansion(depth, topk, generator) for _ in range(20)]
    got = best_tree(*(torch.tensor(column) for column in zip(*expansions, strict=True)), tree_size)
    for row, expansion in enumerate(expansions):
        assert DraftTree(*(t[row].tolist() for t in got)) == _host_rule(*expansion, tree_size)
