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


@dataclass(frozen=True)
class Verdict:
    accepted: list[int]
    """Accepted nodes, from the root's child down."""
    tokens: list[int]
    """The accepted nodes' tokens, then the token the target samples after the last of them (the bonus)."""
    tree_depth: int
    """The depth of the tree's deepest node."""

    @property
    def out_of_place(self) -> bool:
        """Whether an accepted node was written past the slot of its depth (an earlier sibling's), so its
        K/V must move there."""
        return any(node + 1 != depth for depth, node in enumerate(self.accepted, start=1))


@dataclass(frozen=True)
class Acceptance:
    """The verdicts of a batch of trees as device tensors of fixed shape: the accepted path of each tree
    moves its K/V on the device (`verify_inputs.kv_moves`), and the step copies the verdicts to the host at
    once (`summary`, read by `read_verdicts`)."""

    counts: torch.Tensor
    """[B] accepted nodes per tree."""
    path_rows: torch.Tensor
    """[B, W - 1] the accepted nodes' rows (node + 1), shallowest first; entries past `counts` are 0."""
    bonus: torch.Tensor
    """[B] the target's token after each tree's last accepted node."""
    path_tokens: torch.Tensor
    """[B, W - 1] the accepted nodes' tokens, shallowest first; entries past `counts` are the root's."""
    tree_depths: torch.Tensor
    """[B] each tree's deepest node's depth."""

    def summary(self) -> torch.Tensor:
        """[B, 3 + 2 (W - 1)] everything the host reads, as one tensor: one copy brings it back."""
        return torch.cat([self.counts[:, None], self.bonus[:, None], self.tree_depths[:, None], self.path_rows,
                          self.path_tokens], dim=1)


def read_verdicts(summary: torch.Tensor) -> list[Verdict]:
    """The verdicts in an `Acceptance.summary`, copied to the host."""
    paths = (summary.shape[1] - 3) // 2
    result = []
    for count, bonus, depth, *path in summary.tolist():
        result.append(Verdict([row - 1 for row in path[:count]], [*path[paths : paths + count], bonus], depth))
    return result


@dataclass(frozen=True)
class TreeRows:
    """B draft trees laid out as verify rows (speculative/verify_inputs.py builds them with the rows): row 0
    a tree's root, row i + 1 its node i, then padding."""

    tokens: torch.Tensor
    """[B, W] each row's token."""
    ancestors: torch.Tensor
    """[B, W, W] bool: row r sees column c when c is r itself or one of its ancestors, the root included."""
    parents: torch.Tensor
    """[B, W] each node's parent row (0 for the root's children; 0 for the root and padding too)."""
    depths: torch.Tensor
    """[B, W] each node's depth (1 for the root's children); 0 for the root and padding."""

    def walk(self, passes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Given which nodes pass their test ([B, W] bool), the walk's accepted nodes: those that pass, whose
        earlier siblings do not, and whose every ancestor below the root is accepted. Returns the accepted
        count [B], the accepted rows by depth [B, W - 1] and the deepest accepted row (0: the root) [B]."""
        batch, width = self.tokens.shape
        is_node = self.depths > 0
        passes = passes & is_node
        followed = passes & ~(self.earlier_siblings() & passes[:, None, :]).any(dim=-1)
        accepted = is_node & ~(self.ancestors[:, :, 1:] & ~followed[:, None, 1:]).any(dim=-1)
        accepted_depths = torch.where(accepted, self.depths, 0)
        # Each accepted node goes to the column of its depth; the rest to a spare last column, then dropped.
        rows = torch.arange(width, device=self.tokens.device).expand(batch, width)
        path_rows = torch.zeros_like(self.tokens).scatter_(1, (accepted_depths - 1) % width, rows)
        return accepted.sum(dim=-1), path_rows[:, : width - 1], accepted_depths.argmax(dim=-1)

    def acceptance(self, counts: torch.Tensor, path_rows: torch.Tensor, bonus: torch.Tensor) -> Acceptance:
        """The walk's outcome with what the host reads besides: the path's tokens, each tree's depth."""
        return Acceptance(counts, path_rows, bonus, self.tokens.gather(1, path_rows), self.depths.amax(dim=-1))

    def earlier_siblings(self) -> torch.Tensor:
        """[B, W, W] bool: column c is a node under row r's parent that comes before r."""
        rows = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return ((self.parents[:, :, None] == self.parents[:, None, :]) & (rows[None, :] < rows[:, None])
                & (self.depths[:, None, :] > 0))

    def at_parent(self, values: torch.Tensor) -> torch.Tensor:
        """values [B, W, V] -> [B, W]: each node's parent row's value at the node's token."""
        vocab = values.shape[-1]
        return values.flatten(1).gather(1, self.parents * vocab + self.tokens)


def accept_greedy(trees: TreeRows, argmax: torch.Tensor) -> Acceptance:
    """The greedy walk, argmax [B, W] the target's most likely token at each row: a node passes when its
    token is its parent's argmax; the deepest accepted node's argmax is the bonus."""
    counts, path_rows, deepest = trees.walk(trees.tokens == argmax.gather(1, trees.parents))
    return trees.acceptance(counts, path_rows, argmax.gather(1, deepest[:, None]).squeeze(1))


def accept_sampled(trees: TreeRows, probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> Acceptance:
    """Sequential rejection, probs [B, W, V] the target's processed distributions at each row
    (sampler.processed_probs), one generator per tree (or None: the global RNG) for its uniforms and its
    residual draw. Greedy rows' one-hot distributions give the greedy walk.

    A node x under parent p is reached only after its earlier siblings were all rejected, so it passes
    with probability p(x) / (1 - the mass of those siblings' distinct tokens), or 0 if one of them has
    its token. The bonus is drawn from the deepest accepted node's distribution with its children's
    tokens removed (every child was rejected there)."""
    batch, width, vocab = probs.shape
    earlier = trees.earlier_siblings()
    # float64, so renormalising after many rejections loses nothing that matters.
    token_mass = trees.at_parent(probs).double()
    repeated = (earlier & (trees.tokens[:, :, None] == trees.tokens[:, None, :])).any(dim=-1)
    token_mass = torch.where(repeated, 0.0, token_mass)
    rejected_mass = (earlier.double() @ token_mass[:, :, None]).squeeze(-1)
    left = probs.sum(dim=-1, dtype=torch.float64).gather(1, trees.parents) - rejected_mass
    uniforms = uniform_noise((batch, width), generators, probs.device)
    counts, path_rows, deepest = trees.walk(uniforms * left < token_mass)
    children = (trees.depths > 0) & (trees.parents == deepest[:, None])
    removed = torch.zeros((batch, vocab), dtype=torch.int64, device=probs.device)
    removed.scatter_add_(1, trees.tokens, children.long())
    residual = probs.gather(1, deepest[:, None, None].expand(batch, 1, vocab)).squeeze(1).double()
    residual = torch.where(removed > 0, 0.0, residual)
    bonus = sample((residual / residual.sum(dim=-1, keepdim=True)).float(), generators)
    return trees.acceptance(counts, path_rows, bonus)
