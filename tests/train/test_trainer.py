"""The training-time-test unroll must compute exactly what chain drafting computes at inference."""

from __future__ import annotations

import torch

from kilotok.train.trainer import Batch, ttt_loss, unroll
from tests.speculative.eagle3.heads import causal, make_draft

STEPS = 3


def chain_logits(model, tokens: torch.Tensor, fused: torch.Tensor, t: int) -> list[torch.Tensor]:
    """Inference by hand: prefix forward through position t, then one call per draft depth, each seeing the
    prefix keys and its own ancestors, fed the true next token and the previous step's feature."""
    prefix = model(tokens[None, 1 : t + 2], fused[None, : t + 1], torch.arange(t + 1)[None], None, None,
                   causal(t + 1))
    keys, values = prefix.k, prefix.v
    hidden, logits = prefix.hidden[:, -1:], [prefix.logits[0, -1]]
    for depth in range(1, STEPS):
        visible = torch.ones(1, 1, keys.shape[1] + 1, dtype=torch.bool)
        out = model(tokens[None, t + 1 + depth : t + 2 + depth], hidden, torch.tensor([[t + depth]]), keys, values,
                    visible)
        keys, values = torch.cat((keys, out.k), 1), torch.cat((values, out.v), 1)
        hidden = out.hidden
        logits.append(out.logits[0, 0])
    return logits


@torch.no_grad()
def test_unroll_step_j_equals_chain_drafting_at_depth_j():
    model = make_draft()
    length, prompt_len = 12, 5
    torch.manual_seed(3)
    tokens = torch.randint(0, 97, (1, length))
    batch = Batch(tokens, torch.randn(1, length, 96), torch.randn(1, length, 40), torch.tensor([length]),
                  torch.tensor([prompt_len]))
    results = unroll(model, batch, STEPS)
    start = length - results[0].logits.shape[1]
    fused = model.fuse(batch.aux_hidden)[0]
    for t in range(start, length - 1 - STEPS):
        expected = chain_logits(model, tokens[0], fused, t)
        for step in range(STEPS):
            torch.testing.assert_close(results[step].logits[0, t - start], expected[step], atol=1e-5, rtol=1e-5)
            assert results[step].next_tokens[0, t - start] == tokens[0, t + 2 + step]
            assert bool(results[step].valid[0, t - start]) == (t + 2 + step >= prompt_len)


def test_loss_is_the_decayed_soft_cross_entropy():
    model = make_draft()
    batch = Batch(torch.randint(0, 97, (1, 8)), torch.randn(1, 8, 96), torch.randn(1, 8, 40), torch.tensor([8]),
                  torch.tensor([2]))
    results = unroll(model, batch, 2)
    loss, _ = ttt_loss(results, decay=0.5)
    expected = 0.0
    for step, r in enumerate(results):
        p, logq = r.target_logits.softmax(-1), r.logits.log_softmax(-1)
        ce = -(p * logq).sum(-1)[r.valid]
        expected += 0.5**step * ce.mean()
    torch.testing.assert_close(loss, expected)
