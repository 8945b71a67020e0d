"""Acceptance rules against exact math: greedy against a hand walk, sampling against the target law."""

from __future__ import annotations

import pytest
import torch

from kilotok.speculative.tree import ROOT, DraftTree
from kilotok.speculative.verify import Acceptance, TreeRows, accept_greedy, accept_sampled, read_verdicts
from tests.speculative.tree_rows import tree_rows

VOCAB = 5


def _one_hot_logits(argmaxes: list[int]) -> torch.Tensor:
    logits = torch.zeros(len(argmaxes), VOCAB)
    logits[torch.arange(len(argmaxes)), torch.tensor(argmaxes)] = 3.0
    return logits


def _walk(tree: DraftTree, argmax: list[int]) -> list[int]:
    """The greedy walk by hand: from the root, follow the first child proposing the target's argmax."""
    tokens, node = [], ROOT
    while True:
        follow = next((child for child in tree.children(node) if tree.tokens[child] == argmax[node + 1]), None)
        tokens.append(argmax[node + 1])
        if follow is None:
            return tokens
        node = follow


def _tokens(acceptance: Acceptance) -> list[list[int]]:
    return [verdict.tokens for verdict in read_verdicts(acceptance.summary())]


def _greedy_tokens(trees: list[DraftTree], logits: torch.Tensor) -> list[list[int]]:
    return _tokens(accept_greedy(tree_rows(trees, logits.shape[1]), logits.argmax(dim=-1)))


def test_greedy_follows_the_matching_child_and_adds_the_bonus():
    # root -> 1 (node 0) -> 2 (node 2); root -> 3 (node 1) -> 4 (node 3)
    tree = DraftTree([1, 3, 2, 4], [-1, -1, 0, 1])
    # Target argmax per row: root 3, node0 0, node1 4, node2 0, node3 2; then the others.
    argmaxes = [[3, 0, 4, 0, 2], [0, 0, 0, 0, 0], [4, 1, 1, 1, 1]]
    logits = torch.stack([_one_hot_logits(rows) for rows in argmaxes])
    assert _greedy_tokens([tree, tree, DraftTree()], logits) == [[3, 4, 2], [0], [4]]


def test_greedy_over_a_batch_is_the_walk_of_each_tree():
    """Random trees (siblings may propose the same token: the walk takes the first) and target argmaxes
    over a small vocabulary, so that paths of every length are accepted."""
    generator = torch.Generator().manual_seed(0)
    trees = []
    for _ in range(200):
        size = int(torch.randint(0, 9, (), generator=generator))
        parents = [int(torch.randint(-1, i, (), generator=generator)) for i in range(size)]
        tokens = torch.randint(0, 3, (size,), generator=generator).tolist()
        trees.append(DraftTree(tokens, parents))
    logits = torch.randn(len(trees), 9, VOCAB, generator=generator)
    logits[..., 3:] -= 2.0  # mostly tokens 0-2, the ones proposed
    expected = [_walk(tree, row.argmax(dim=-1).tolist()) for tree, row in zip(trees, logits, strict=True)]
    assert _greedy_tokens(trees, logits) == expected
    assert {len(tokens) for tokens in expected} >= {1, 2, 3, 4}
    # Sampled acceptance of a greedy request's one-hot distributions is the same walk.
    one_hot = torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    assert _tokens(accept_sampled(tree_rows(trees, 9), one_hot, [None] * len(trees))) == expected


@pytest.mark.parametrize("tree", [
    DraftTree([0, 1, 2, 3], [-1, -1, 0, 0]),
    # A third child of the root repeats token 0, under which the target would always say 4: once token 0
    # is rejected it has probability 0, so that node must never be accepted.
    DraftTree([0, 1, 0, 2, 3], [-1, -1, -1, 0, 0]),
], ids=["distinct", "repeated-sibling"])
def test_sampled_first_two_tokens_follow_the_target(tree):
    """Two levels with two children at the root: the emitted (t1, t2) pairs must be distributed as
    p_root(t1) * p_{t1}(t2), where p_{t1} is the target at the node for t1 when t1 was proposed; when
    t1 was not proposed only t1 is emitted. Every draw is a tree of its own in one batch."""
    root, after_0, after_1 = [0.5, 0.3, 0.1, 0.1, 0.0], [0.2, 0.0, 0.4, 0.3, 0.1], [0.1, 0.1, 0.1, 0.1, 0.6]
    # Rows: the root, its children 0 and 1, then (if any) the repeated 0, then the two under 0.
    probs = torch.tensor([root, after_0, after_1] + [[0.0, 0.0, 0.0, 0.0, 1.0]] * (len(tree) - 4)
                         + [[0.2] * VOCAB] * 2)
    draws = 30000
    trees = TreeRows(*(rows.expand(draws, *rows.shape[1:]) for rows in vars(tree_rows([tree], len(tree) + 1)).values()))
    acceptance = accept_sampled(trees, probs.expand(draws, -1, -1), [torch.Generator().manual_seed(0)] * draws)
    counts = torch.zeros(VOCAB, VOCAB + 1)  # column VOCAB: nothing emitted after t1
    for tokens in _tokens(acceptance):
        counts[tokens[0], tokens[1] if len(tokens) > 1 else VOCAB] += 1
    expected = torch.zeros(VOCAB, VOCAB + 1)
    expected[0, :VOCAB] = 0.5 * torch.tensor(after_0)
    expected[1, :VOCAB] = 0.3 * torch.tensor(after_1)
    expected[2:, VOCAB] = torch.tensor(root[2:])
    observed = counts / draws
    assert counts[expected == 0].sum() == 0
    # Standard errors are below 0.003 for every cell; 0.012 is four of them.
    torch.testing.assert_close(observed, expected, atol=0.012, rtol=0)
