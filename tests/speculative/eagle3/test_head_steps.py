"""The head's draft steps as tensor programs: the whole-tree expansion against a node-by-node oracle (each
node run alone over exactly the keys it may see), padded catch-up against the unpadded forward, and the
compiled graphs against eager."""

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


@torch.no_grad()
@pytest.mark.parametrize(("depth", "topk"), [(1, 3), (3, 1), (4, 2), (3, 3)])
def test_expansion_matches_a_node_by_node_oracle(depth, topk):
    head = make_draft(seed=depth + topk)
    past_k, past_v, logits, hidden, last = _committed(head, 7, seed=1)
    got_tokens, got_scores, got_parents = HeadSteps(head, compile_steps=False).expand(past_k, past_v, logits, hidden,
                                                                                      last, depth, topk)
    tokens, scores, parents = _oracle_candidates(head, past_k, past_v, logits, hidden, last, depth, topk)
    assert got_tokens.tolist() == tokens and got_parents.tolist() == parents
    torch.testing.assert_close(got_scores, torch.tensor(scores), atol=1e-5, rtol=1e-5)
    assert len(tokens) == topk + (depth - 1) * topk * topk


@torch.no_grad()
@pytest.mark.parametrize("count", [1, 3, 5])
def test_padded_catch_up_equals_the_unpadded_forward(count):
    head = make_draft(seed=3)
    past_k, past_v, *_ = _committed(head, 6, seed=2)
    generator = torch.Generator().manual_seed(count)
    tokens = torch.randint(0, 97, (count,), generator=generator).tolist()
    features = torch.randn(count, 3 * D, generator=generator)
    positions = torch.arange(20, 20 + count)
    got = HeadSteps(head, compile_steps=False).catch_up(tokens, features, positions, past_k, past_v)
    mask = torch.cat((torch.ones(1, count, 6, dtype=torch.bool), causal(count)), dim=2)
    want = head(torch.tensor([tokens]), head.fuse(features).unsqueeze(0), positions.unsqueeze(0), past_k, past_v,
                mask)
    for name in ("hidden", "logits", "k", "v"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_compiled_steps_equal_eager_as_the_context_grows():
    head = make_draft(seed=5)
    eager, compiled = HeadSteps(head, compile_steps=False), HeadSteps(head, compile_steps=True)
    past_k, past_v, logits, hidden, last = _committed(head, 5, seed=4)
    for step in range(3):
        want = eager.expand(past_k, past_v, logits, hidden, last, 3, 2)
        got = compiled.expand(past_k, past_v, logits, hidden, last, 3, 2)
        assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
        torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)
        count = 2 + step
        tokens, features = list(range(count)), torch.randn(count, 3 * D)
        positions = torch.arange(last + 1, last + 1 + count)
        want_out = eager.catch_up(tokens, features, positions, past_k, past_v)
        got_out = compiled.catch_up(tokens, features, positions, past_k, past_v)
        torch.testing.assert_close(got_out.logits, want_out.logits, atol=1e-4, rtol=1e-4)
        past_k, past_v = torch.cat((past_k, got_out.k), dim=1), torch.cat((past_v, got_out.v), dim=1)
        logits, hidden, last = got_out.logits[0, -1], got_out.hidden[0, -1], last + count
    assert not compiled._compile_failed
    # Later calls of each shape ran the recorded graphs without dynamo (runner/compiled_step.py).
    assert all(step._replays for step in compiled._calls.values())
