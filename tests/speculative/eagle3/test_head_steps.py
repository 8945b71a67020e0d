"""The head's draft steps as tensor programs: the whole-tree expansion against a node-by-node oracle (each
node run alone over exactly the keys it may see), padded catch-up against the unpadded forward, and the
compiled graphs (catch-up; expansion with the choice of the best tree) against eager."""

from __future__ import annotations

import pytest
import torch

from kilotok.speculative.eagle3.head_steps import HeadSteps
from kilotok.speculative.tree import ROOT
from tests.speculative.eagle3.heads import causal, make_draft

pytestmark = pytest.mark.usefixtures("one_thread")

D = 32


def _committed(head, length: int, seed: int):
    """The head's keys and last output over `length` random inputs at positions 3.. (a gap before)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 97, (1, length), generator=generator)
    features = torch.randn(1, length, 3 * D, generator=generator)
    positions = torch.arange(3, 3 + length).unsqueeze(0)
    out = head(tokens, head.fuse(features), positions, None, None, causal(length))
    return out.k, out.v, out.logits[0, -1], out.hidden[0, -1], 2 + length


def _oracle_candidates(head, past_k, past_v, logits, hidden, last: int, depth: int, topk: int):
    """Node by node: every frontier node runs alone, over the committed keys, its ancestors' own keys
    (kept from when they ran) and itself."""
    scores, ids = logits.log_softmax(-1).topk(topk)
    nodes = [{"token": int(head.draft_to_target(i)), "score": float(s), "parent": ROOT, "feature": hidden,
              "keys": ([], [])} for s, i in zip(scores, ids, strict=True)]
    level = list(range(topk))
    for step in range(1, depth):
        frontier = sorted(level, key=lambda i: -nodes[i]["score"])[:topk]
        level = []
        for index in frontier:
            node = nodes[index]
            keys_k = torch.cat([past_k, *node["keys"][0]], dim=1)
            keys_v = torch.cat([past_v, *node["keys"][1]], dim=1)
            mask = torch.ones(1, 1, keys_k.shape[1] + 1, dtype=torch.bool)
            out = head(torch.tensor([[node["token"]]]), node["feature"].view(1, 1, -1),
                       torch.tensor([[last + step]]), keys_k, keys_v, mask)
            own = ([*node["keys"][0], out.k], [*node["keys"][1], out.v])
            child_scores, child_ids = out.logits[0, 0].log_softmax(-1).topk(topk)
            for s, i in zip(child_scores, child_ids, strict=True):
                level.append(len(nodes))
                nodes.append({"token": int(head.draft_to_target(i)), "score": node["score"] + float(s),
                              "parent": index, "feature": out.hidden[0, 0], "keys": own})
    return [n["token"] for n in nodes], [n["score"] for n in nodes], [n["parent"] for n in nodes]


def _window(pasts: list[tuple[torch.Tensor, torch.Tensor]], seed: int):
    """Sequences' committed keys and values ([1, C, Hkv, D] each) as one window [B, max C, Hkv, D] padded
    with noise, which only the masks keep out, and their committed counts."""
    generator = torch.Generator().manual_seed(seed)
    width = max(k.shape[1] for k, _ in pasts)
    window = [torch.randn(len(pasts), width, *pasts[0][0].shape[2:], generator=generator) for _ in range(2)]
    for row, past in enumerate(pasts):
        for padded, own in zip(window, past, strict=True):
            padded[row, : own.shape[1]] = own[0]
    return tuple(window), torch.tensor([k.shape[1] for k, _ in pasts])


LENGTHS = (7, 3, 9)
"""Committed inputs of a batch's sequences: the window is as wide as the longest."""


@torch.no_grad()
@pytest.mark.parametrize(("depth", "topk"), [(1, 3), (3, 1), (4, 2), (3, 3)])
def test_expansion_matches_a_node_by_node_oracle(depth, topk):
    """A batch of sequences with different contexts grows at once; each sequence's candidates are its
    own oracle's."""
    head = make_draft(seed=depth + topk)
    committed = [_committed(head, length, seed=row) for row, length in enumerate(LENGTHS)]
    window, counts = _window([(k, v) for k, v, *_ in committed], seed=depth)
    logits, hidden = (torch.stack([c[i] for c in committed]) for i in (2, 3))
    last = torch.tensor([c[4] for c in committed])
    got = HeadSteps(head, compile_steps=False).expand(window, counts, logits, hidden, last, depth, topk)
    for row, (past_k, past_v, *root) in enumerate(committed):
        tokens, scores, parents = _oracle_candidates(head, past_k, past_v, *root, depth, topk)
        assert got[0][row].tolist() == tokens and got[2][row].tolist() == parents
        torch.testing.assert_close(got[1][row], torch.tensor(scores), atol=1e-5, rtol=1e-5)
    assert got[0].shape == (len(LENGTHS), topk + (depth - 1) * topk * topk)


@torch.no_grad()
@pytest.mark.parametrize("count", [1, 3, 5])
def test_padded_catch_up_equals_the_unpadded_forward(count):
    """Sequences with different contexts and different numbers of new inputs, padded to one row count:
    each sequence's real rows equal its own unpadded forward."""
    head = make_draft(seed=3)
    pasts = [_committed(head, length, seed=row)[:2] for row, length in enumerate(LENGTHS)]
    window, committed = _window(pasts, seed=count)
    counts = [count, 1, 4]
    generator = torch.Generator().manual_seed(count)
    tokens = torch.randint(0, 97, (3, 8), generator=generator)
    features = torch.randn(3, 8, 3 * D, generator=generator)
    positions = torch.arange(20, 28).expand(3, 8)
    got = HeadSteps(head, compile_steps=False).catch_up(tokens, features, positions, committed, window)
    for row, ((past_k, past_v), real) in enumerate(zip(pasts, counts, strict=True)):
        mask = torch.cat((torch.ones(1, real, past_k.shape[1], dtype=torch.bool), causal(real)), dim=2)
        want = head(tokens[row : row + 1, :real], head.fuse(features[row : row + 1, :real]),
                    positions[row : row + 1, :real], past_k, past_v, mask)
        for name in ("hidden", "logits", "k", "v"):
            torch.testing.assert_close(getattr(got, name)[row : row + 1, :real], getattr(want, name),
                                       atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_compiled_steps_equal_eager_as_the_context_grows():
    head = make_draft(seed=5)
    eager, compiled = HeadSteps(head, compile_steps=False), HeadSteps(head, compile_steps=True)
    committed = [_committed(head, length, seed=4 + row) for row, length in enumerate((5, 2))]
    (past_k, past_v), counts = _window([(k, v) for k, v, *_ in committed], seed=6)
    logits, hidden = (torch.stack([c[i] for c in committed]) for i in (2, 3))
    last = torch.tensor([c[4] for c in committed])
    for step in range(3):
        want = eager.draft((past_k, past_v), counts, logits, hidden, last, 3, 2, 4)
        got = compiled.draft((past_k, past_v), counts, logits, hidden, last, 3, 2, 4)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        rows = 2 + step
        tokens, features = torch.arange(2 * rows).view(2, rows), torch.randn(2, rows, 3 * D)
        positions = last[:, None] + 1 + torch.arange(rows)
        want_out = eager.catch_up(tokens, features, positions, counts, (past_k, past_v))
        got_out = compiled.catch_up(tokens, features, positions, counts, (past_k, past_v))
        torch.testing.assert_close(got_out.logits, want_out.logits, atol=1e-4, rtol=1e-4)
        # Each sequence's new keys follow its own: the window widens by the inputs of this step.
        past_k, past_v = (torch.cat((past, torch.zeros_like(new)), dim=1).index_put_(
            (torch.arange(2)[:, None], counts[:, None] + torch.arange(rows)), new)
            for past, new in ((past_k, got_out.k), (past_v, got_out.v)))
        logits, hidden, last, counts = got_out.logits[:, -1], got_out.hidden[:, -1], last + rows, counts + rows
    assert not compiled.calls.failed
    # Later calls of each shape ran the recorded graphs without dynamo (runner/compiled_step.py).
    assert all(step._replays for step in compiled.calls.compiled.values())


@torch.no_grad()
def test_one_compiled_graph_serves_every_batch_size_from_two_on():
    """The batch is a dynamic dimension: batches of 2, 3 and 5 sequences replay one expansion graph, a
    single sequence its own, and each equals eager."""
    head = make_draft(seed=7)
    eager, compiled = HeadSteps(head, compile_steps=False), HeadSteps(head, compile_steps=True)
    committed = [_committed(head, length, seed=10 + row) for row, length in enumerate((4, 6, 3, 5, 2))]
    for batch in (2, 3, 1, 5, 2):
        (past_k, past_v), counts = _window([(k, v) for k, v, *_ in committed[:batch]], seed=batch)
        logits, hidden = (torch.stack([c[i] for c in committed[:batch]]) for i in (2, 3))
        last = torch.tensor([c[4] for c in committed[:batch]])
        want = eager.draft((past_k, past_v), counts, logits, hidden, last, 3, 2, 4)
        got = compiled.draft((past_k, past_v), counts, logits, hidden, last, 3, 2, 4)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert len(compiled.calls.compiled["draft"]._replays) == 2
