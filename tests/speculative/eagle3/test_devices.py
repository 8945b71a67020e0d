"""Every tensor the drafter makes lives where the head and the target's features do: with both on a
device other than the host (`meta`, see tests/host_tensors.py), no step builds a tensor on the host or
mixes one into device arithmetic. On a GPU such a tensor fails, or copies between host and device inside
every draft."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from kilotok.speculative.eagle3.drafter import DraftState, Eagle3Drafter
from kilotok.speculative.eagle3.head_steps import HeadSteps
from kilotok.speculative.policy import TreeShape
from kilotok.speculative.tree import DraftTree
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
@pytest.mark.parametrize(("count", "committed"), [(5, 0), (3, 1), (3, 6), (20, 6)])
def test_catch_up_builds_nothing_on_the_host(count, committed):
    """Eager (no or one committed key, or more rows than any compiled bucket) and padded catch-up."""
    steps = HeadSteps(make_draft().to(DEVICE), compile_steps=False)
    features = torch.empty(count, 3 * D, device=DEVICE)
    positions = torch.arange(10, 10 + count, device=DEVICE)
    past = torch.empty(1, committed, 2, 8, device=DEVICE) if committed else None
    with HostTensors() as audit:
        out = steps.catch_up(list(range(count)), features, positions, past, past)
    assert audit.ops == []
    assert {t.device for t in (out.hidden, out.logits, out.k, out.v)} == {DEVICE}


@torch.no_grad()
@pytest.mark.parametrize(("depth", "topk"), [(1, 2), (3, 1), (4, 3)])
def test_tree_expansion_builds_nothing_on_the_host(depth, topk):
    steps = HeadSteps(make_draft().to(DEVICE), compile_steps=False)
    past_k, past_v = torch.empty(1, 7, 2, 8, device=DEVICE), torch.empty(1, 7, 2, 8, device=DEVICE)
    logits, hidden = torch.empty(40, device=DEVICE), torch.empty(D, device=DEVICE)
    with HostTensors() as audit:
        candidates = steps.expand(past_k, past_v, logits, hidden, 9, depth, topk)
    assert audit.ops == []
    assert {t.device for t in candidates} == {DEVICE}


@torch.no_grad()
def test_the_drafter_catches_up_on_the_features_device():
    """The drafter's own part of a draft: pending features from a prefill and a verify step, caught up
    eagerly (the first inputs) and then padded, and the tree grown and chosen; the positions it makes go
    to the features' device."""
    drafter = Eagle3Drafter(make_draft().to(DEVICE), topk=2)
    seq = SimpleNamespace(token_ids=list(range(12)), draft_state=DraftState())
    with HostTensors() as audit:
        seq.draft_state.receive(0, torch.empty(6, 3 * D, device=DEVICE))
        drafter.catch_up(seq)
        seq.draft_state.receive(6, torch.empty(3, 3 * D, device=DEVICE))
        drafter.catch_up(seq)
        cache = seq.draft_state.cache
        tree = drafter._grow(cache, TreeShape(depth=3, tree_size=4))
    assert audit.ops == []
    assert {t.device for t in tree} == {DEVICE}
    assert (cache.committed, cache.last_position) == (9, 8)
    assert {t.device for t in (cache.past_k, cache.past_v, cache.logits, cache.hidden)} == {DEVICE}


def test_verify_inputs_are_built_on_the_device():
    """The sequences' block tables and the trees (Python lists) are copied to the device, and every row
    is built there: nothing else touches the host."""
    seqs = [Sequence(list(range(n)), SamplingParams(), block_table=[1, 2]) for n in (5, 9)]
    trees = [DraftTree([7, 8, 9], [-1, 0, 0]), DraftTree.chain([4])]
    with HostTensors() as audit:
        batch = build_verify_inputs(seqs, trees, 4, 8, block_size=16, max_blocks=4, device=DEVICE)
    assert audit.ops == []
    tensors = [batch.input_ids, batch.positions, batch.roots, batch.slots, *vars(batch.trees).values(),
               *(value for value in vars(batch.meta).values() if isinstance(value, torch.Tensor))]
    assert len(tensors) >= 15 and {t.device for t in tensors} == {DEVICE}
