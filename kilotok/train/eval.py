"""Held-out acceptance estimate for chain drafting, from the same unroll the training uses.

From each response position the target has reached, the draft proposes `steps` tokens greedily, each
from its own previous feature. While every proposal so far matched the target's greedy answer, the
draft's input tokens equal the true tokens, so the unroll's step j is exactly what chain drafting would
compute there. Tokens per target forward = 1 + the number of leading steps whose top draft token (mapped
to a target id) equals the target's token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kilotok.speculative.eagle3.model import Eagle3DraftModel
from kilotok.train.features import FeatureSet
from kilotok.train.trainer import collate, unroll


@dataclass(frozen=True)
class AcceptanceEstimate:
    acceptance_length: float
    """Mean tokens per target forward for a chain of `steps` drafts (between 1 and steps + 1)."""
    step_accuracy: tuple[float, ...]
    """Fraction of positions whose step-j draft token is right, given all earlier steps were right."""
    positions: int


@torch.inference_mode()
def estimate_acceptance(model: Eagle3DraftModel, features: FeatureSet, head_rows: torch.Tensor, steps: int,
                        batch_size: int = 8) -> AcceptanceEstimate:
    accepted_total, positions = 0.0, 0
    reached = torch.zeros(steps)
    correct = torch.zeros(steps)
    for first in range(0, len(features), batch_size):
        batch = collate(features, list(range(first, min(first + batch_size, len(features)))), head_rows)
        results = unroll(model, batch, steps)
        start_valid = results[0].valid
        alive = start_valid.clone()
        for step, result in enumerate(results):
            guess = model.draft_to_target(result.logits.argmax(dim=-1))
            hit = (guess == result.next_tokens) & result.valid
            reached[step] += int(alive.sum())
            alive = alive & hit
            correct[step] += int(alive.sum())
            accepted_total += float(alive.sum())
        positions += int(start_valid.sum())
    if positions == 0:
        return AcceptanceEstimate(1.0, tuple(0.0 for _ in range(steps)), 0)
    accuracy = tuple(float(c / r) if r else 0.0 for c, r in zip(correct, reached, strict=True))
    return AcceptanceEstimate(1.0 + accepted_total / positions, accuracy, positions)
