"""The compiled verify steps against the eager functions they compile (themselves tested against hand-worked
rows and exact walks in test_verify_inputs.py and test_verify.py)."""

from __future__ import annotations

import random

import pytest
import torch

from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from kilotok.speculative.tree import DraftTree, DraftTrees
from kilotok.speculative.verify import accept_greedy
from kilotok.speculative.verify_inputs import build_verify_inputs, kv_moves, verify_width
from kilotok.speculative.verify_steps import VerifySteps

BLOCK = 16
MAX_BLOCKS = 16


def _random_tokens(rng: random.Random, parents: list[int]) -> DraftTree:
    return DraftTree([rng.randrange(6) for _ in parents], parents)


def _flat(batch) -> list[torch.Tensor | None]:
    return [batch.input_ids, batch.positions, batch.roots, batch.slots, *vars(batch.trees).values(),
            *vars(batch.meta).values()]


@pytest.mark.parametrize("key_windows", [True, False])
@torch.no_grad()
def test_compiled_rows_and_greedy_verdicts_equal_eager_as_contexts_grow(key_windows):
    """Three sequences (one without a tree) whose contexts grow across three key-window widths: one
    compiled graph each for the rows and the verdicts, equal to eager every time."""
    rng = random.Random(3)
    compiled = VerifySteps(compile_steps=True)
    tables = [rng.sample(range(1, 64), MAX_BLOCKS) for _ in range(3)]
    accepted, generator = 0, torch.Generator().manual_seed(4)
    for length in (20, 90, 150):
        seqs = [Sequence(list(range(length + row * 7)), SamplingParams(), block_table=table)
                for row, table in enumerate(tables)]
        trees = DraftTrees.from_trees([_random_tokens(rng, [-1, 0, 0, 1, 3]), DraftTree(),
                                       _random_tokens(rng, [-1, -1, 1])])
        width = verify_width(trees)
        args = (seqs, trees, width, 24, BLOCK, MAX_BLOCKS, torch.device("cpu"), key_windows)
        want, got = build_verify_inputs(*args[:-1], key_windows=key_windows), compiled.build(*args)
        assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
                   for a, b in zip(_flat(got), _flat(want), strict=True))
        logits = torch.randn(3, width, 40, generator=generator)
        logits[:, :, :6] += 3.0  # the trees' tokens: some nodes are accepted
        acceptance = accept_greedy(want.trees, logits.argmax(dim=-1))
        summary, *moves = compiled.greedy(got, logits, trees.full)
        assert torch.equal(summary, acceptance.summary())
        accepted += int(acceptance.counts.sum())
        assert all(map(torch.equal, moves, kv_moves(want.roots, want.slots, acceptance)))
    assert not compiled.calls.failed and accepted > 0
    # The key window's width is dynamic: each step's layout was recorded once and replayed after.
    assert [len(step._replays) for step in compiled.calls.compiled.values()] == [1, 1]


@torch.no_grad()
def test_trees_that_do_not_fill_their_columns_run_eagerly():
    """Trees cut short (near the end of the context, a short prompt-lookup chain) would each be a shape of
    their own: they run eagerly, and the same as eager."""
    compiled = VerifySteps(compile_steps=True)
    seqs = [Sequence(list(range(30)), SamplingParams(), block_table=list(range(1, 1 + MAX_BLOCKS)))]
    trees = DraftTrees.from_trees([DraftTree.chain([4, 5])], width=4)
    assert not trees.full and DraftTrees.from_trees([DraftTree.chain([4, 5])]).full
    width = verify_width(trees)
    got = compiled.build(seqs, trees, width, 4, BLOCK, MAX_BLOCKS, torch.device("cpu"), True)
    want = build_verify_inputs(seqs, trees, width, 4, BLOCK, MAX_BLOCKS, torch.device("cpu"))
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
               for a, b in zip(_flat(got), _flat(want), strict=True))
    logits = torch.randn(1, width, 40, generator=torch.Generator().manual_seed(5))
    summary, *_ = compiled.greedy(got, logits, trees.full)
    assert torch.equal(summary, accept_greedy(want.trees, logits.argmax(dim=-1)).summary())
    assert [len(step._replays) for step in compiled.calls.compiled.values()] == [0, 0]
