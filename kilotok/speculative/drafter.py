"""The interface every drafter implements, model-free (prompt lookup) or a draft model (EAGLE-3, or a
separate small model): the speculative decoder tells it what the target computed, and asks it for one
tree per sequence and step. A drafter keeps whatever it needs per request in `seq.draft_state`."""

from __future__ import annotations

from typing import Protocol

import torch

from kilotok.sequence import Sequence
from kilotok.speculative.policy import TreeShape
from kilotok.speculative.tree import DraftTrees


class Drafter(Protocol):
    aux_layer_ids: tuple[int, ...]
    """Target layers whose input hidden states (the features) the drafter reads, concatenated in this
    order; () for none, so the target skips collecting them."""

    def prefilled(self, seq: Sequence, start: int, features: torch.Tensor | None, next_token: int | None) -> None:
        """A chunk of `seq` from position `start` went through the target (start 0 also after a
        preemption: everything starts over). `features` [chunk length, k * d] are the chunk's; when the
        chunk completed the prompt, `next_token` is the token sampled after it, else None."""

    def verified(self, seq: Sequence, tokens: list[int], features: torch.Tensor | None) -> None:
        """A verify step kept `tokens` (accepted drafts, then the bonus token) after the sequence's last
        token; `features` [len(tokens), k * d] are those of that last token and the accepted drafts."""

    def release(self, seq: Sequence) -> None:
        """The sequence finished or was preempted: drop what the drafter keeps for it (a preempted sequence
        starts over from its prompt)."""

    def warm_up(self, seqs: list[Sequence], shape: TreeShape) -> None:
        """Build the compiled graphs of the drafter's own work that steps of `shape` can run, over warm-up
        sequences just prefilled (speculative/decoder.py); they must stay ready to draft for."""

    def propose(self, seqs: list[Sequence], shape: TreeShape) -> DraftTrees:
        """One tree per sequence, rooted at its last token, no deeper or larger than `shape`; on the device
        where the drafter made them (verification moves host trees there)."""
