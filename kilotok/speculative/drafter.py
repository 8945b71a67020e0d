"""The interface every drafter implements, model-free (prompt lookup) or a draft model (EAGLE-3, or a
separate small model): the engine tells it about a sequence's life, and asks it for one tree per step."""

from __future__ import annotations

from typing import Protocol

import torch

from kilotok.engine.sequence import Sequence
from kilotok.speculative.policy import TreeShape
from kilotok.speculative.tree import DraftTree


class Drafter(Protocol):
    aux_layer_ids: tuple[int, ...]
    """Target layers whose input hidden states the drafter reads (concatenated in this order); () for
    none, so the target skips collecting them."""

    def start(self, seq: Sequence, aux_hidden: torch.Tensor | None) -> None:
        """After the prefill of `seq` (also after a recompute following preemption): `seq.token_ids` ends
        with the newly sampled token, and `aux_hidden` [len(seq) - 1, k * d] holds the target features
        of every earlier position."""

    def propose(self, seqs: list[Sequence], shape: TreeShape) -> list[DraftTree]:
        """One tree per sequence, rooted at its last token, no deeper or larger than `shape`."""

    def advance(self, seq: Sequence, aux_hidden: torch.Tensor | None) -> None:
        """After a verify step: `seq.token_ids` gained the accepted tokens and the bonus token, and
        `aux_hidden` [accepted + 1, k * d] holds the target features of the root and accepted nodes."""

    def release(self, seq: Sequence) -> None:
        """The sequence finished or was aborted: drop any per-sequence state."""
