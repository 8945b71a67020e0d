"""The EAGLE-3 head's two kinds of work per draft, as tensor programs that `torch.compile` turns into one
graph each: catching up on the target's features of the newest positions, and drafting: growing a whole
tree's levels (EAGLE-2 dynamic expansion) without returning to Python between levels, then choosing the
best nodes.

On a small CPU the head's eager forward costs far more in per-op dispatch than in arithmetic (its int8
weights are about 10 MB, read once per level); one graph per draft does it in a handful of calls. Graphs
are built per shape: catch-up per row-count bucket, drafting per (depth, top-k, tree size), each for one
sequence and for any larger batch; the key window's width and the batch size are dynamic dimensions, so
neither a growing context nor another batch size needs a new graph. As the target's decode graphs are,
each graph is called without dynamo's guards once built (runner/compiled_step.py).

The expansion: the root's top-k children form level 1. Each further level runs the head once over the
frontier (the k best nodes of the level before, by cumulative log-probability), each node reading its
parent's output feature at position last + level and attending to the committed keys, its expanded
ancestors' keys and its own; each frontier node's top-k children form the level. The candidates come out
in level order, each level's frontier-major, and the best `tree_size` of them form the tree (`best_tree`).
Both steps run over a batch of sequences at once, each reading its own committed keys out of a shared
window.
"""

from __future__ import annotations

import torch

from kilotok.runner.compiled_step import CompiledCalls
from kilotok.speculative.eagle3.model import Eagle3DraftModel, Eagle3Output
from kilotok.speculative.tree import ROOT

COMPILED_ROWS = (1, 2, 4, 8, 16)
"""Row buckets of compiled catch-up; longer catch-ups (a prompt) run eagerly, once per request."""

KeyWindow = tuple[torch.Tensor, torch.Tensor]
"""The committed keys and values of a batch's sequences, [B, W, Hkv, D] each: row b's first committed[b]
columns are its own, the rest padding (`HeadCache.window`)."""


def catch_up_rows(count: int) -> int:
    """The rows a catch-up of `count` inputs runs: the next compiled bucket, or `count` past the largest."""
    return next((bucket for bucket in COMPILED_ROWS if bucket >= count), count)


class HeadSteps:
    def __init__(self, head: Eagle3DraftModel, compile_steps: bool) -> None:
        self.head = head
        self.calls = CompiledCalls({"catch_up": self._catch_up_tensors, "draft": self._draft}, compile_steps,
                                   "the draft head")

    def catch_up(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                 committed: torch.Tensor, window: KeyWindow | None) -> Eagle3Output:
        """The head over new inputs (tokens and positions [B, R], target features [B, R, k * d]) after each
        sequence's committed keys (`committed` [B] of `window`; None when no sequence has any), causal
        among themselves. Padding inputs go after a sequence's real ones, which causal order keeps from
        seeing them."""
        args = (tokens, features, positions, committed, *(window or (None, None)))
        if not _compilable(window) or tokens.shape[1] not in COMPILED_ROWS:
            return self._catch_up(*args)
        return Eagle3Output(*self._call("catch_up", *args))

    def draft(self, window: KeyWindow, committed: torch.Tensor, root_logits: torch.Tensor, root_hidden: torch.Tensor,
              last_position: torch.Tensor, depth: int, topk: int,
              tree_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence's tree: the `tree_size` best of the candidates `expand` scores (`best_tree`), as
        (tokens, parents) [B, tree_size] on the head's device, expansion and choice in one graph."""
        args = (*window, committed, root_logits, root_hidden, last_position, depth, topk, tree_size)
        return self._call("draft", *args) if _compilable(window) else self._draft(*args)

    def expand(self, window: KeyWindow, committed: torch.Tensor, root_logits: torch.Tensor,
               root_hidden: torch.Tensor, last_position: torch.Tensor, depth: int,
               topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every node the expansion of each sequence scores (its committed keys `committed` [B] of `window`,
        its root's children's scores [B, V] and feature [B, d], its newest committed position [B]), in level
        order (top-k at level 1, top-k x top-k at each later level), as [B, N] tensors on the head's device:
        target token ids, cumulative log-probabilities under the head, and parents (indices into these, or
        ROOT)."""
        head = self.head
        past_k, past_v = window
        batch, device = root_logits.shape[0], root_logits.device
        sequence = torch.arange(batch, device=device)[:, None]  # with a [B, k] index, picks per sequence
        committed_keys = _own_columns(past_k, committed).expand(batch, topk, -1)
        scores, draft_ids = root_logits.log_softmax(dim=-1).topk(topk)
        tokens = [head.draft_to_target(draft_ids)]
        all_scores = [scores]
        parents = [torch.full((batch, topk), ROOT, dtype=torch.int64, device=device)]
        features = root_hidden[:, None].expand(batch, topk, -1)
        # Per candidate of the newest level: which speculative key columns its expanded ancestors own.
        ancestors = torch.zeros(batch, topk, 0, dtype=torch.bool, device=device)
        first = 0  # index of the newest level's first candidate
        own = torch.eye(topk, dtype=torch.bool, device=device).expand(batch, topk, topk)
        for level in range(1, depth):
            best = all_scores[-1].topk(topk).indices
            frontier_ancestors = ancestors[sequence, best]
            mask = torch.cat((committed_keys, frontier_ancestors, own), dim=2)
            out = head(tokens[-1][sequence, best], features[sequence, best],
                       (last_position[:, None] + level).expand(batch, topk), past_k, past_v, mask)
            past_k = torch.cat((past_k, out.k), dim=1)
            past_v = torch.cat((past_v, out.v), dim=1)
            child_scores, child_ids = out.logits.log_softmax(dim=-1).topk(topk)
            tokens.append(head.draft_to_target(child_ids).flatten(1))
            all_scores.append((all_scores[-1][sequence, best].unsqueeze(2) + child_scores).flatten(1))
            parents.append((first + best).repeat_interleave(topk, dim=1))
            first += tokens[-2].shape[1]
            features = out.hidden.repeat_interleave(topk, dim=1)
            ancestors = torch.cat((frontier_ancestors, own), dim=2).repeat_interleave(topk, dim=1)
        return torch.cat(tokens, dim=1), torch.cat(all_scores, dim=1), torch.cat(parents, dim=1)

    def _call(self, name: str, *args):
        """The compiled graph of `name` for these arguments' shapes (eager where compiling failed)."""
        _mark_dynamic(name, args)
        return self.calls(name, *args)

    def _catch_up(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                  committed: torch.Tensor, past_k: torch.Tensor | None, past_v: torch.Tensor | None) -> Eagle3Output:
        head = self.head
        batch, rows = tokens.shape
        mask = torch.ones(rows, rows, dtype=torch.bool, device=tokens.device).tril().expand(batch, rows, rows)
        if past_k is not None:
            mask = torch.cat((_own_columns(past_k, committed).expand(batch, rows, -1), mask), dim=2)
        return head(tokens, head.fuse(features), positions, past_k, past_v, mask)

    def _catch_up_tensors(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                          committed: torch.Tensor, past_k: torch.Tensor,
                          past_v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`_catch_up`'s output as a tuple (hidden, logits, k, v): what a compiled step returns."""
        out = self._catch_up(tokens, features, positions, committed, past_k, past_v)
        return out.hidden, out.logits, out.k, out.v

    def _draft(self, past_k: torch.Tensor, past_v: torch.Tensor, committed: torch.Tensor, root_logits: torch.Tensor,
               root_hidden: torch.Tensor, last_position: torch.Tensor, depth: int, topk: int,
               tree_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        candidates = self.expand((past_k, past_v), committed, root_logits, root_hidden, last_position, depth, topk)
        return best_tree(*candidates, tree_size)


def best_tree(tokens: torch.Tensor, scores: torch.Tensor, parents: torch.Tensor,
              tree_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `tree_size` best of each sequence's candidates ([B, N] each, in level order, as
    `HeadSteps.expand` gives them) as (tokens, parents renumbered to the chosen) [B, tree_size], on their
    device. Ties go to the earlier candidate, the shallower: as a child never scores above its parent, the
    best nodes always include their ancestors."""
    best = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :tree_size]
    chosen = best.sort(dim=-1).values
    order = torch.arange(chosen.shape[1], device=chosen.device).expand_as(chosen)
    renumbered = torch.full_like(parents, ROOT).scatter_(1, chosen, order)
    chosen_parents = parents.gather(1, chosen)
    return tokens.gather(1, chosen), torch.where(chosen_parents == ROOT, ROOT,
                                                 renumbered.gather(1, chosen_parents.clamp(min=0)))


def _own_columns(past_k: torch.Tensor, committed: torch.Tensor) -> torch.Tensor:
    """[B, 1, W]: which of the window's key columns are each sequence's own."""
    return (torch.arange(past_k.shape[1], device=past_k.device) < committed[:, None]).unsqueeze(1)


def _compilable(window: KeyWindow | None) -> bool:
    """Compiled graphs take the key window's width as a dynamic dimension, which cannot be 0 or 1 (torch
    specializes those sizes): the first inputs of a batch's sequences run eagerly."""
    return window is not None and window[0].shape[1] >= 2


def _mark_dynamic(name: str, args: tuple) -> None:
    """The key window's width varies step by step, and the batch with the sequences drafted for: both are
    dynamic dimensions, so neither a growing context nor another batch size needs a new graph (a batch of
    one stays its own graph, as torch specializes size 1)."""
    past_k, past_v = (args[4], args[5]) if name == "catch_up" else (args[0], args[1])
    torch._dynamo.mark_dynamic(past_k, 1)
    torch._dynamo.mark_dynamic(past_v, 1)
    if past_k.shape[0] >= 2:
        for tensor in args:
            if isinstance(tensor, torch.Tensor):
                torch._dynamo.mark_dynamic(tensor, 0)
