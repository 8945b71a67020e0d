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

Both walks run over a whole batch of trees at once, as tensor ops of fixed shape: each node's test
depends only on its parent's distribution and its earlier siblings' tokens (which were all rejected if
the walk reaches it), so every node is tested at once, with a uniform of its own, and the walk is then
the path of nodes that pass where no earlier sibling does. A step reads the verdicts back in one copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kilotok.layers.sampler import sample, uniform_noise
from kilotok.speculative.tree import DraftTree


@dataclass(frozen=True)
class Verdict:
    accepted: list[int]
    """Accepted nodes, from the root's child down."""
    bonus: int
    """The token the target samples after the last accepted node."""

    def tokens(self, tree: DraftTree) -> list[int]:
        return [tree.tokens[node] for node in self.accepted] + [self.bonus]

    @property
    def moves_kv(self) -> bool:
        """Whether an accepted node was written past the slot of its depth (an earlier sibling's)."""
        return any(node + 1 != depth for depth, node in enumerate(self.accepted, start=1))


@dataclass(frozen=True)
class Acceptance:
    """The verdicts of a batch of trees as device tensors of fixed shape: the accepted path of each tree
    moves its K/V on the device (`verify_inputs.accepted_kv_moves`), and the step copies the verdicts to
    the host at once."""

    counts: torch.Tensor
    """[B] accepted nodes per tree."""
    path_rows: torch.Tensor
    """[B, W - 1] the accepted nodes' rows (node + 1), shallowest first; entries past `counts` are 0."""
    bonus: torch.Tensor
    """[B] the target's token after each tree's last accepted node."""

    def verdicts(self) -> list[Verdict]:
        summary = torch.cat([self.counts[:, None], self.bonus[:, None], self.path_rows], dim=1).tolist()
        return [Verdict([row - 1 for row in path[:count]], bonus) for count, bonus, *path in summary]


class _Trees:
    """The structure of B trees laid out as verify rows. row_tokens [B, W]: row 0 a tree's root, row i + 1
    its node i, then padding; ancestors [B, W, W] bool: row r sees column c when c is r itself or one of
    its ancestors, the root included (padding rows do not see the root)."""

    def __init__(self, row_tokens: torch.Tensor, ancestors: torch.Tensor) -> None:
        self.tokens = row_tokens
        self.ancestors = ancestors
        self.rows = torch.arange(row_tokens.shape[1], device=row_tokens.device)
        self.is_node = ancestors[:, :, 0] & (self.rows > 0)
        strict = ancestors & (self.rows[:, None] != self.rows[None, :])
        # Parents come before their children, so a node's parent is its last strict ancestor.
        self.parent = torch.where(strict, self.rows, -1).amax(dim=-1).clamp(min=0)
        self.earlier_sibling = ((self.parent[:, :, None] == self.parent[:, None, :])
                                & (self.rows[None, :] < self.rows[:, None]) & self.is_node[:, None, :])

    def walk(self, passes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Given which nodes pass their test ([B, W] bool), the walk's accepted nodes: those that pass, whose
        earlier siblings do not, and whose every ancestor below the root is accepted. Returns the accepted
        count [B], the accepted rows by depth [B, W - 1] and the deepest accepted row (0: the root) [B]."""
        batch, width = self.tokens.shape
        followed = passes & self.is_node & ~(self.earlier_sibling & passes[:, None, :]).any(dim=-1)
        accepted = self.is_node & ~(self.ancestors[:, :, 1:] & ~followed[:, None, 1:]).any(dim=-1)
        depth = self.ancestors.sum(dim=-1) - 1
        deepest = torch.where(accepted, depth, 0).argmax(dim=-1)
        # Each accepted node goes to the column of its depth; the rest to a spare last column, then dropped.
        column = torch.where(accepted, depth - 1, width - 1)
        path_rows = torch.zeros_like(self.tokens).scatter_(1, column, self.rows.expand(batch, width))
        return accepted.sum(dim=-1), path_rows[:, : width - 1], deepest

    def at_parent(self, values: torch.Tensor) -> torch.Tensor:
        """values [B, W, V] -> [B, W]: each node's parent row's value at the node's token."""
        vocab = values.shape[-1]
        return values.flatten(1).gather(1, self.parent * vocab + self.tokens)


def accept_greedy(row_tokens: torch.Tensor, ancestors: torch.Tensor, logits: torch.Tensor) -> Acceptance:
    """The greedy walk over B trees (laid out as `_Trees` says), logits [B, W, V] the target's at each row:
    a node passes when its token is its parent's argmax; the deepest accepted node's argmax is the bonus."""
    trees = _Trees(row_tokens, ancestors)
    argmax = logits.argmax(dim=-1)
    counts, path_rows, deepest = trees.walk(row_tokens == argmax.gather(1, trees.parent))
    return Acceptance(counts, path_rows, argmax.gather(1, deepest[:, None]).squeeze(1))


def accept_sampled(row_tokens: torch.Tensor, ancestors: torch.Tensor, probs: torch.Tensor,
                   generators: Sequence[torch.Generator | None]) -> Acceptance:
    """Sequential rejection over B trees (laid out as `_Trees` says), probs [B, W, V] the target's processed
    distributions at each row (sampler.processed_probs), one generator per tree (or None: the global RNG)
    for its uniforms and its residual draw. Greedy rows' one-hot distributions give the greedy walk.

    A node x under parent p is reached only after its earlier siblings were all rejected, so it passes
    with probability p(x) / (1 - the mass of those siblings' distinct tokens), or 0 if one of them has
    its token. The bonus is drawn from the deepest accepted node's distribution with its children's
    tokens removed (every child was rejected there)."""
    trees = _Trees(row_tokens, ancestors)
    batch, width, vocab = probs.shape
    # float64, so renormalising after many rejections loses nothing that matters.
    token_mass = trees.at_parent(probs).double()
    repeated = (trees.earlier_sibling & (row_tokens[:, :, None] == row_tokens[:, None, :])).any(dim=-1)
    token_mass = torch.where(repeated, 0.0, token_mass)
    rejected_mass = (trees.earlier_sibling.double() @ token_mass[:, :, None]).squeeze(-1)
    left = probs.sum(dim=-1, dtype=torch.float64).gather(1, trees.parent) - rejected_mass
    uniforms = uniform_noise((batch, width), generators, probs.device)
    counts, path_rows, deepest = trees.walk(uniforms * left < token_mass)
    children = trees.is_node & (trees.parent == deepest[:, None])
    removed = torch.zeros((batch, vocab), dtype=torch.int64, device=probs.device)
    removed.scatter_add_(1, row_tokens, children.long())
    residual = probs.gather(1, deepest[:, None, None].expand(batch, 1, vocab)).squeeze(1).double()
    residual = torch.where(removed > 0, 0.0, residual)
    bonus = sample((residual / residual.sum(dim=-1, keepdim=True)).float(), generators)
    return Acceptance(counts, path_rows, bonus)
