"""Every tensor the drafter makes lives where the head and the target's features do: with both on a
device other than the host (`meta`, see tests/host_tensors.py), no step builds a tensor on the host or
mixes one into device arithmetic. On a GPU such a tensor fails, or copies between host and device inside
every draft."""

from __future__ import annotations

import pytest
import torch

from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from kilotok.speculative.eagle3.drafter import DraftState, Eagle3Drafter
from kilotok.speculative.eagle3.head_steps import HeadSteps
from kilotok.speculative.policy import TreeShape
from kilotok.speculative.tree import DraftTree, DraftTrees
from kilotok.speculative.verify_inputs import build_verify_inputs
from tests.host_tensors import DEVICE, HostTensors
from tests.speculative.eagle3.heads import make_draft

pytestmark = pytest.mark.usefixtures("one_thread")

D = 32


@torch.no_grad()
def test_the_audit_catches_host_tensors_that_torch_lets_through():
    """The check itself: Python data copied to the device passes; a 0-d host tensor in device arithmetic,
    which torch allows (and which costs a copy on a GPU), does not."""
    x = torch.ones(3, device=DEVICE)
    with HostTensors() as audit:
        _ = x + torch.tensor([1, 2, 3], device=DEVICE)
        assert audit.ops == []
        _ = x + torch.tensor(2)
        assert audit.ops
        with pytest.raises(RuntimeError, match="device"):
            _ = x + torch.zeros(3)


@torch.no_grad()
@pytest.mark.parametrize(("rows", "width"), [(5, 0), (3, 1), (4, 6), (20, 6)])
def test_catch_up_builds_nothing_on_the_host(rows, width):
    """Eager (a window of no or one column, or more rows than any compiled bucket) and compiled-shaped
    catch-up of two sequences."""
    steps = HeadSteps(make_draft().to(DEVICE), compile_steps=False)
    tokens = positions = torch.empty(2, rows, dtype=torch.int64, device=DEVICE)
    features = torch.empty(2, rows, 3 * D, device=DEVICE)
    window = (torch.empty(2, width, 2, 8, device=DEVICE),) * 2 if width else None
    with HostTensors() as audit:
        out = steps.catch_up(tokens, features, positions, torch.empty(2, dtype=torch.int64, device=DEVICE), window)
    assert audit.ops == []
    assert {t.device for t in (out.hidden, out.logits, out.k, out.v)} == {DEVICE}


@torch.no_grad()
@pytest.mark.parametrize(("depth", "topk"), [(1, 2), (3, 1), (4, 3)])
def test_tree_expansion_builds_nothing_on_the_host(depth, topk):
    steps = HeadSteps(make_draft().to(DEVICE), compile_steps=False)
    window = (torch.empty(2, 7, 2, 8, device=DEVICE),) * 2
    committed, last = (torch.empty(2, dtype=torch.int64, device=DEVICE) for _ in range(2))
    logits, hidden = torch.empty(2, 40, device=DEVICE), torch.empty(2, D, device=DEVICE)
    with HostTensors() as audit:
        candidates = steps.expand(window, committed, logits, hidden, last, depth, topk)
    assert audit.ops == []
    assert {t.device for t in candidates} == {DEVICE}


@torch.no_grad()
def test_the_drafter_catches_up_and_grows_on_the_features_device():
    """The drafter's own part of a draft for two sequences: pending features from prefills and a verify
    step, caught up eagerly (the first inputs) and then padded, and the trees grown and chosen. What it
    makes from host data (tokens, positions, rows) goes to the features' device in one copy."""
    drafter = Eagle3Drafter(make_draft().to(DEVICE), topk=2)
    seqs = [Sequence(list(range(length)), SamplingParams()) for length in (12, 8)]
    with HostTensors() as audit:
        for seq, prompt in zip(seqs, (6, 4), strict=True):
            seq.draft_state = DraftState()
            seq.draft_state.receive(0, torch.empty(prompt, 3 * D, device=DEVICE))
        drafter.catch_up(seqs)
        seqs[0].draft_state.receive(6, torch.empty(5, 3 * D, device=DEVICE))
        seqs[1].draft_state.receive(4, torch.empty(3, 3 * D, device=DEVICE))
        tree = drafter.grow(seqs, TreeShape(depth=3, tree_size=4))
    assert audit.ops == []
    assert {t.device for t in tree} == {DEVICE} and tree[0].shape == (2, 4)
    cache = drafter.cache
    assert [cache.committed[seq.draft_state.row] for seq in seqs] == [11, 7]
    assert {t.device for t in (cache.k, cache.v, cache.logits, cache.hidden, cache.last_position)} == {DEVICE}


def test_verify_inputs_are_built_on_the_device():
    """The sequences' block tables are copied to the device, where the trees are, and every row is built
    there: nothing else touches the host."""
    seqs = [Sequence(list(range(n)), SamplingParams(), block_table=[1, 2]) for n in (5, 9)]
    trees = DraftTrees.from_trees([DraftTree([7, 8, 9], [-1, 0, 0]), DraftTree.chain([4])], DEVICE)
    with HostTensors() as audit:
        batch = build_verify_inputs(seqs, trees, 4, 8, block_size=16, max_blocks=4, device=DEVICE)
    assert audit.ops == []
    tensors = [batch.input_ids, batch.positions, batch.roots, batch.slots, *vars(batch.trees).values(),
               *(value for value in vars(batch.meta).values() if isinstance(value, torch.Tensor))]
    assert len(tensors) >= 15 and {t.device for t in tensors} == {DEVICE}
