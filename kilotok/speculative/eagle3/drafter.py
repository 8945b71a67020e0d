"""EAGLE-3 drafting with dynamic trees (EAGLE-2): grow the most promising branches level by level.

Draft positions follow the head's training: the draft input at position t is (token t + 1, feature of
position t), and its output predicts token t + 2. For each sequence the drafter keeps, in its row of a
`HeadCache`, the head's keys and values of every committed input (one per position, built from the
target's own features) and the head's output at the last one, which already scores the children of the
root (the newest token). One head call catches up, and one expansion drafts, for the whole batch.

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
from kilotok.speculative.eagle3.head_cache import HeadCache
from kilotok.speculative.eagle3.head_steps import COMPILED_ROWS, HeadSteps, catch_up_rows
from kilotok.speculative.eagle3.model import Eagle3DraftModel
from kilotok.speculative.policy import TreeShape
from kilotok.speculative.tree import DraftTrees


@dataclass
class DraftState:
    """The drafter's state of one sequence, kept in `seq.draft_state`."""

    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    """(first position, target features [n, k * d]) the head has not run over yet: a prompt's chunks, and
    later steps' kept positions, until the sequence is next drafted for. The head then runs over them all
    at once, so a chunked prefill drafts as a whole one does."""
    next_position: int = 0
    """The position after the newest feature received."""
    row: int | None = None
    """The sequence's row of the drafter's `HeadCache`, from its first catch-up until it is released."""

    def receive(self, start: int, features: torch.Tensor) -> None:
        self.pending.append((start, features))
        self.next_position = start + features.shape[0]

    def pending_features(self) -> torch.Tensor:
        """The pending inputs' features [n, k * d], in position order."""
        return torch.cat([part for _, part in self.pending])


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
        self.cache = HeadCache()

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
            self.release(seq)
            state = seq.draft_state = DraftState()
        state.receive(start, features)

    def verified(self, seq: Sequence, tokens: list[int], features: torch.Tensor | None) -> None:
        if seq.params.speculate and features is not None:
            # The features are the root's (the sequence's last token, at len(seq) - 1) and the accepted drafts'.
            if seq.draft_state is None:
                seq.draft_state = DraftState()
            seq.draft_state.receive(len(seq) - 1, features)

    def release(self, seq: Sequence) -> None:
        """The sequence finished or lost its KV blocks: its row of the head's cache is free again."""
        state: DraftState | None = seq.draft_state
        if state is not None and state.row is not None:
            self.cache.release(state.row)
        seq.draft_state = None

    @torch.inference_mode()
    def warm_up(self, seqs: list[Sequence], shape: TreeShape) -> None:
        """Catch up on the prompts of `seqs`, then once more on the last positions of each, for every
        compiled row count up to the one a step of `shape` leaves pending (the root and up to `shape.depth`
        accepted nodes); each time the sequences end as ready as they began."""
        features = [seq.draft_state.pending_features() for seq in seqs]
        self.catch_up(seqs)
        longest = min(catch_up_rows(shape.depth + 1), len(seqs[0]) - 1)  # a short context window holds fewer
        for rows in (bucket for bucket in COMPILED_ROWS if bucket <= longest):
            for seq, own in zip(seqs, features, strict=True):
                seq.draft_state.receive(len(seq) - 1 - rows, own[-rows:])
            self.catch_up(seqs)

    @staticmethod
    def ready(seq: Sequence) -> bool:
        """Whether the head has (or has pending) the input at the position before the newest token, which
        scores the root's children."""
        state: DraftState | None = seq.draft_state
        return state is not None and state.next_position == len(seq) - 1

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], shape: TreeShape) -> DraftTrees:
        """The ready sequences' trees, grown and chosen on the device in one batch, where they stay. The
        others get empty trees: this step's features make them ready for the next."""
        ready = [row for row, seq in enumerate(seqs) if self.ready(seq)]
        if not ready:
            return DraftTrees.empty(len(seqs), "cpu")  # no tree: the step is a plain one, which reads none
        tokens, parents = self.grow([seqs[row] for row in ready], shape)
        return DraftTrees(tokens, parents, (tokens.shape[1],) * len(ready), shape.depth).placed(ready, len(seqs))

    def grow(self, seqs: list[Sequence], shape: TreeShape) -> tuple[torch.Tensor, torch.Tensor]:
        """Ready sequences' trees as (tokens, parents) [B, tree_size] on the head's device: the head catches
        up on their pending inputs, then grows and chooses every tree at once."""
        self.catch_up(seqs)
        cache = self.cache
        row_ids = [seq.draft_state.row for seq in seqs]
        committed, device = [cache.committed[row] for row in row_ids], cache.k.device
        rows = cache.index(row_ids, device)
        return self.steps.draft(cache.window(rows, max(committed)), torch.tensor(committed, device=device),
                                cache.logits[rows], cache.hidden[rows], cache.last_position[rows], shape.depth,
                                self.topk, shape.tree_size)

    def catch_up(self, seqs: list[Sequence]) -> None:
        """Run the head over the pending inputs of `seqs` (token t + 1, target feature t, whose tokens the
        sequences hold by now) and commit their keys. The few inputs of verify steps go in one head call,
        padded to the largest compiled row bucket among them; a prompt's many run on their own (sequences
        with as many inputs together)."""
        groups: dict[int, list[tuple[Sequence, list[int]]]] = {}
        for seq in seqs:
            state: DraftState = seq.draft_state
            if state.pending:
                positions = [position for start, part in state.pending for position in range(start, start + len(part))]
                groups.setdefault(0 if len(positions) <= COMPILED_ROWS[-1] else len(positions), []).append(
                    (seq, positions))
        for group in groups.values():
            self._catch_up(group, catch_up_rows(max(len(positions) for _, positions in group)))

    def _catch_up(self, group: list[tuple[Sequence, list[int]]], width: int) -> None:
        cache = self.cache
        for seq, _ in group:
            if seq.draft_state.row is None:
                seq.draft_state.row = cache.acquire()
        row_ids = [seq.draft_state.row for seq, _ in group]
        # Per sequence: tokens, positions and cache slots, padded to `width` by repeating its last input, then
        # its committed count and its last real input's index among all B * width. One copy to the device.
        host = []
        for index, ((seq, positions), row_slots) in enumerate(zip(group, cache.slots(row_ids, width), strict=True)):
            tokens = [seq.token_ids[position + 1] for position in positions]
            host.append([*_padded(tokens, width), *_padded(positions, width), *row_slots,
                         cache.committed[seq.draft_state.row], index * width + len(positions) - 1])
        features = torch.stack([_padded_rows(seq.draft_state.pending_features(), width) for seq, _ in group])
        packed = torch.tensor(host, device=features.device)
        tokens, positions, slots = packed[:, : 3 * width].view(len(group), 3, width).unbind(1)
        committed, last = packed[:, 3 * width :].unbind(1)
        rows = cache.index(row_ids, features.device)
        out = self.steps.catch_up(tokens, features, positions, committed,
                                  cache.window(rows, max(cache.committed[row] for row in row_ids)))
        cache.commit(rows, row_ids, [len(inputs) for _, inputs in group], out, slots.flatten(), last, positions)
        for seq, _ in group:
            seq.draft_state.pending = []


def _padded(values: list[int], width: int) -> list[int]:
    return values + values[-1:] * (width - len(values))


def _padded_rows(rows: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat((rows, rows[-1:].expand(width - len(rows), -1)))
