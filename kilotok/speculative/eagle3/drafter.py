"""EAGLE-3 drafting with dynamic trees (EAGLE-2): grow the most promising branches level by level.

Draft positions follow the head's training: the draft input at position t is (token t + 1, feature of
position t), and its output predicts token t + 2. For each sequence the drafter keeps the head's keys
and values of every committed input (one per position, built from the target's own features) and the
head's output at the last one, which already scores the children of the root (the newest token).

The head's inputs keep their positions in the sequence, and may have gaps: positions whose features it
never got (steps at batch sizes where the policy drafts nothing, cached prompt blocks) are simply absent
from its keys. It drafts for a sequence once it has the feature of the position before the newest token.

A step then expands: the root's top-k children form level 1; each level runs the head once over the
frontier (the k best nodes of that level by cumulative log-probability, each reading its parent's
output feature) and scores its top-k children; after `depth` levels the best `tree_size` nodes overall
form the tree. A child never scores above its parent, so the best nodes always include their ancestors.
The speculative keys of a step are dropped; the accepted tokens are committed with the target's
features when the sequence is next drafted for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kilotok.errors import ModelNotFoundError
from kilotok.models.causal_lm import CausalLM
from kilotok.quant.lowbit import LowBitLinear, lowbit_available, pack_float
from kilotok.sequence import Sequence
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.eagle3.checkpoint import default_draft_path, load_eagle3
from kilotok.speculative.eagle3.head_steps import HeadSteps
from kilotok.speculative.eagle3.model import Eagle3DraftModel
from kilotok.speculative.policy import TreeShape
from kilotok.speculative.tree import ROOT, DraftTree


@dataclass
class _HeadCache:
    """What the head computed for one sequence's committed inputs."""

    past_k: torch.Tensor
    """[1, C, Hkv, D] the head's keys of the C committed inputs, in position order."""
    past_v: torch.Tensor
    logits: torch.Tensor
    """[draft_vocab] the head's output at the newest committed input: scores of the root's children."""
    hidden: torch.Tensor
    """[d] the head's output feature at the newest committed input, read by the root's children."""
    last_position: int
    """The newest committed input's position."""

    @property
    def committed(self) -> int:
        return self.past_k.shape[1]


@dataclass
class DraftState:
    """The drafter's state of one sequence, kept in `seq.draft_state`."""

    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    """(first position, target features [n, k * d]) the head has not run over yet: a prompt's chunks, and
    later steps' kept positions, until the sequence is next drafted for. The head then runs over them all
    at once, so a chunked prefill drafts as a whole one does."""
    next_position: int = 0
    """The position after the newest feature received."""
    cache: _HeadCache | None = None

    def receive(self, start: int, features: torch.Tensor) -> None:
        self.pending.append((start, features))
        self.next_position = start + features.shape[0]


def _quantize_linears(head: Eagle3DraftModel) -> None:
    """Run the head's linear layers through the int8 CPU op: drafting reads every weight once per tree
    level, for a few rows, so the bytes read are its cost, and int8 reads a quarter of fp32's."""
    for name, module in list(head.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, attribute = name.rpartition(".")
            setattr(head.get_submodule(parent), attribute, LowBitLinear(pack_float(module.weight, 8), module.bias))


class Eagle3Drafter:
    def __init__(self, head: Eagle3DraftModel, topk: int, compile_steps: bool = False) -> None:
        """`compile_steps`: run catch-up and expansion as compiled graphs (head_steps.py)."""
        self.head = head
        self.topk = min(topk, head.config.draft_vocab_size)
        self.aux_layer_ids: tuple[int, ...] = tuple(head.config.aux_layer_ids)
        self.steps = HeadSteps(head, compile_steps)

    @classmethod
    def load(cls, spec: SpecConfig, model: CausalLM, model_name: str, compile_steps: bool) -> Eagle3Drafter:
        folder = spec.draft or default_draft_path(model_name)
        if folder is None:
            raise ModelNotFoundError(
                f"no EAGLE-3 draft head is shipped for {model_name}: pass one with --draft PATH "
                "(train it with `kilotok train-draft`), or use --spec ngram"
            )
        device = model.embed_tokens.weight.device
        # The head is built on the host, sharing the target's embedding; its own weights follow the target.
        head = load_eagle3(folder, model.config, model.embed_tokens.weight).to(device)
        if device.type == "cpu" and lowbit_available():
            _quantize_linears(head)
        return cls(head, spec.topk, compile_steps)

    def prefilled(self, seq: Sequence, start: int, features: torch.Tensor | None, next_token: int | None) -> None:
        if not seq.params.speculate or features is None:
            return  # never drafted for, or no features collected: nothing to keep
        state: DraftState | None = seq.draft_state
        if state is None or start < state.next_position:
            # A new request, or one preempted and now recomputed: its head inputs start over.
            state = seq.draft_state = DraftState()
        state.receive(start, features)

    def verified(self, seq: Sequence, tokens: list[int], features: torch.Tensor | None) -> None:
        if seq.params.speculate and features is not None:
            # The features are the root's (the sequence's last token, at len(seq) - 1) and the accepted drafts'.
            if seq.draft_state is None:
                seq.draft_state = DraftState()
            seq.draft_state.receive(len(seq) - 1, features)

    @staticmethod
    def ready(seq: Sequence) -> bool:
        """Whether the head has (or has pending) the input at the position before the newest token, which
        scores the root's children."""
        state: DraftState | None = seq.draft_state
        return state is not None and state.next_position == len(seq) - 1

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], shape: TreeShape) -> list[DraftTree]:
        """Each ready sequence's tree, chosen on the device; the batch's trees come back in one copy."""
        grown = {}
        for row, seq in enumerate(seqs):
            if self.ready(seq):
                self.catch_up(seq)
                grown[row] = torch.stack(self._grow(seq.draft_state.cache, shape))
        chosen = torch.stack(list(grown.values())).tolist() if grown else []
        trees = {row: DraftTree(*tree) for row, tree in zip(grown, chosen, strict=True)}
        # The others get empty trees: this step's features make them ready for the next.
        return [trees.get(row, DraftTree()) for row in range(len(seqs))]

    def catch_up(self, seq: Sequence) -> None:
        """Run the head over the pending inputs (token t + 1, target feature t), whose tokens the sequence
        holds by now, and keep their keys."""
        state: DraftState = seq.draft_state
        if not state.pending:
            return
        # Positions are known on the host: built there once, then copied to the features' device in one go.
        positions = [position for start, part in state.pending for position in range(start, start + len(part))]
        features = torch.cat([part for _, part in state.pending])
        state.pending = []
        tokens = [seq.token_ids[position + 1] for position in positions]
        cache = state.cache
        out = self.steps.catch_up(tokens, features, torch.tensor(positions, device=features.device),
                                  None if cache is None else cache.past_k, None if cache is None else cache.past_v)
        past_k = out.k if cache is None else torch.cat((cache.past_k, out.k), dim=1)
        past_v = out.v if cache is None else torch.cat((cache.past_v, out.v), dim=1)
        state.cache = _HeadCache(past_k, past_v, out.logits[0, -1], out.hidden[0, -1], positions[-1])

    def _grow(self, cache: _HeadCache, shape: TreeShape) -> tuple[torch.Tensor, torch.Tensor]:
        candidates = self.steps.expand(cache.past_k, cache.past_v, cache.logits, cache.hidden, cache.last_position,
                                       shape.depth, self.topk)
        return best_tree(*candidates, shape.tree_size)


def best_tree(tokens: torch.Tensor, scores: torch.Tensor, parents: torch.Tensor,
              tree_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `tree_size` best of an expansion's candidates (in level order, as `HeadSteps.expand` gives them)
    as (tokens, parents renumbered to the chosen), on their device. Ties go to the earlier candidate, the
    shallower: as a child never scores above its parent, the best nodes always include their ancestors."""
    best = torch.sort(scores, descending=True, stable=True).indices[:tree_size]
    chosen = best.sort().values
    renumbered = torch.full_like(parents, ROOT).scatter_(0, chosen, torch.arange(len(chosen), device=chosen.device))
    chosen_parents = parents[chosen]
    return tokens[chosen], torch.where(chosen_parents == ROOT, ROOT, renumbered[chosen_parents.clamp(min=0)])
