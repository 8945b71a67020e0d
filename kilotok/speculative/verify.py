"""Which draft nodes the target accepts, and the token it adds after them: lossless by construction.

Greedy: walk down from the root, following the child whose token is the target's argmax at the current
node; the argmax where the walk stops is the bonus token. The result is exactly what plain greedy
decoding would have produced, token by token.

Sampling: the children of a node are deterministic proposals, so each is tested by sequential
rejection against the current target distribution p: accept child x with probability p(x); on
rejection set p(x) = 0 and renormalise, then try the next child. When every child is rejected the
token is drawn from what is left of p. By induction each emitted token is distributed exactly as p
(the probability of emitting x is the chance of reaching x's test times p'(x), plus the residual
draw), so the output distribution is the target's whatever the drafter proposes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kilotok.layers.sampler import sample
from kilotok.speculative.tree import ROOT, DraftTree


@dataclass(frozen=True)
class Verdict:
    accepted: list[int]
    """Accepted nodes, from the root's child down."""
    bonus: int
    """The token the target samples after the last accepted node."""

    def tokens(self, tree: DraftTree) -> list[int]:
        return [tree.tokens[node] for node in self.accepted] + [self.bonus]


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """logits: [len(tree) + 1, V], row 0 the root's, row i + 1 node i's."""
    argmax = logits.argmax(dim=-1).tolist()
    accepted: list[int] = []
    node = ROOT
    while True:
        wanted = argmax[node + 1]
        follow = next((child for child in tree.children(node) if tree.tokens[child] == wanted), None)
        if follow is None:
            return Verdict(accepted, wanted)
        accepted.append(follow)
        node = follow


def verify_sampled(tree: DraftTree, probs: torch.Tensor, generator: torch.Generator | None) -> Verdict:
    """probs: [len(tree) + 1, V], the target's processed distributions (sampler.processed_probs)."""
    accepted: list[int] = []
    node = ROOT
    while True:
        # float64, so renormalising after many rejections loses nothing that matters.
        p = probs[node + 1].to(torch.float64, copy=True)
        follow = None
        for child in tree.children(node):
            token = tree.tokens[child]
            uniform = torch.rand((), generator=generator, dtype=torch.float64, device=p.device)
            if uniform * p.sum() < p[token]:
                follow = child
                break
            p[token] = 0.0
        if follow is None:
            residual = (p / p.sum()).float().unsqueeze(0)
            return Verdict(accepted, int(sample(residual, [generator])[0]))
        accepted.append(follow)
        node = follow
