"""The EAGLE-3 head's two kinds of work per draft, as tensor programs that `torch.compile` turns into one
graph each: catching up on the target's features of the newest positions, and growing a whole tree's
levels (EAGLE-2 dynamic expansion) without returning to Python between levels.

On a small CPU the head's eager forward costs far more in per-op dispatch than in arithmetic (its int8
weights are about 10 MB, read once per level); one graph per draft does it in a handful of calls. Graphs
are built per shape: catch-up per row-count bucket, expansion per (depth, top-k); the number of
committed keys is a dynamic dimension, so a sequence's growing context needs no new graph. As the
target's decode graphs are, each graph is called without dynamo's guards once built
(runner/compiled_step.py).

The expansion: the root's top-k children form level 1. Each further level runs the head once over the
frontier (the k best nodes of the level before, by cumulative log-probability), each node reading its
parent's output feature at position last + level and attending to the committed keys, its expanded
ancestors' keys and its own; each frontier node's top-k children form the level. The candidates come out
in level order, each level's frontier-major, for the caller to pick the best tree from.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from kilotok.runner.compiled_step import CompiledStep
from kilotok.speculative.eagle3.model import Eagle3DraftModel, Eagle3Output
from kilotok.speculative.tree import ROOT

COMPILED_ROWS = (1, 2, 4, 8, 16)
"""Row buckets of compiled catch-up; longer catch-ups (a prompt) run eagerly, once per request."""


class HeadSteps:
    def __init__(self, head: Eagle3DraftModel, compile_steps: bool) -> None:
        self.head = head
        self._eager = {"catch_up": self._catch_up_tensors, "expand": self._expand}
        self._calls: dict[str, Callable] = dict(self._eager)
        if compile_steps:
            self._calls = {name: CompiledStep(call) for name, call in self._eager.items()}
        self._compile_failed = not compile_steps

    def catch_up(self, tokens: list[int], features: torch.Tensor, positions: torch.Tensor,
                 past_k: torch.Tensor | None, past_v: torch.Tensor | None) -> Eagle3Output:
        """The head over new inputs (tokens [n], target features [n, k * d] at `positions` [n]) after
        the committed keys, causal among themselves: the head's output for the n inputs."""
        count, device = len(tokens), features.device
        rows = next((bucket for bucket in COMPILED_ROWS if bucket >= count), None)
        if not _compilable(past_k) or rows is None:
            return self._catch_up(torch.tensor([tokens], device=device), features.unsqueeze(0),
                                  positions.unsqueeze(0), past_k, past_v)
        # Padding rows repeat the last input after the real ones: causal order keeps them out of real rows' view.
        padding = rows - count
        padded_tokens = torch.tensor([tokens + tokens[-1:] * padding], device=device)
        padded_features = torch.cat((features, features[-1:].expand(padding, -1))).unsqueeze(0)
        padded_positions = torch.cat((positions, positions[-1:].expand(padding))).unsqueeze(0)
        out = self._call("catch_up", padded_tokens, padded_features, padded_positions, past_k, past_v)
        return Eagle3Output(*(tensor[:, :count] for tensor in out))

    def expand(self, past_k: torch.Tensor, past_v: torch.Tensor, root_logits: torch.Tensor,
               root_hidden: torch.Tensor, last_position: int, depth: int,
               topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every node the expansion scores, in level order (top-k at level 1, top-k x top-k at each later
        level), as tensors on the head's device: target token ids, cumulative log-probabilities under the
        head, and parents (indices into these, or ROOT)."""
        args = (past_k, past_v, root_logits, root_hidden, torch.tensor(last_position, device=past_k.device), depth,
                topk)
        return self._call("expand", *args) if _compilable(past_k) else self._expand(*args)

    def _call(self, name: str, *args):
        """The compiled graph of `name` for these arguments' shapes; eager where compiling fails (one line
        says so)."""
        if self._compile_failed:
            return self._eager[name](*args)
        _mark_key_lengths(name, args)
        try:
            return self._calls[name](*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
            print(f"kilotok: the draft head runs eager (torch.compile failed: {type(error).__name__}: {error})",
                  file=sys.stderr)
            self._compile_failed = True
            return self._eager[name](*args)

    def _catch_up(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                  past_k: torch.Tensor | None, past_v: torch.Tensor | None) -> Eagle3Output:
        head = self.head
        rows = tokens.shape[1]
        committed = 0 if past_k is None else past_k.shape[1]
        mask = torch.cat((torch.ones(rows, committed, dtype=torch.bool, device=tokens.device),
                          torch.ones(rows, rows, dtype=torch.bool, device=tokens.device).tril()), dim=1)
        return head(tokens, head.fuse(features), positions, past_k, past_v, mask.unsqueeze(0))

    def _catch_up_tensors(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                          past_k: torch.Tensor, past_v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`_catch_up`'s output as a tuple (hidden, logits, k, v): what a compiled step returns."""
        out = self._catch_up(tokens, features, positions, past_k, past_v)
        return out.hidden, out.logits, out.k, out.v

    def _expand(self, past_k: torch.Tensor, past_v: torch.Tensor, root_logits: torch.Tensor,
                root_hidden: torch.Tensor, last_position: torch.Tensor, depth: int,
                topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        head = self.head
        committed, device = past_k.shape[1], past_k.device
        scores, draft_ids = root_logits.log_softmax(dim=-1).topk(topk)
        tokens = [head.draft_to_target(draft_ids)]
        all_scores = [scores]
        parents = [torch.full((topk,), ROOT, dtype=torch.int64, device=device)]
        features = root_hidden.expand(topk, -1)
        # Per candidate of the newest level: which speculative key columns its expanded ancestors own.
        ancestors = torch.zeros(topk, 0, dtype=torch.bool, device=device)
        first = 0  # index of the newest level's first candidate
        own = torch.eye(topk, dtype=torch.bool, device=device)
        for level in range(1, depth):
            best = all_scores[-1].topk(topk).indices
            frontier_ancestors = ancestors[best]
            mask = torch.cat((torch.ones(topk, committed, dtype=torch.bool, device=device), frontier_ancestors, own),
                             dim=1)
            out = head(tokens[-1][best].unsqueeze(0), features[best].unsqueeze(0),
                       (last_position + level).expand(1, topk), past_k, past_v, mask.unsqueeze(0))
            past_k = torch.cat((past_k, out.k), dim=1)
            past_v = torch.cat((past_v, out.v), dim=1)
            child_scores, child_ids = out.logits[0].log_softmax(dim=-1).topk(topk)
            tokens.append(head.draft_to_target(child_ids).flatten())
            all_scores.append((all_scores[-1][best].unsqueeze(1) + child_scores).flatten())
            parents.append((first + best).repeat_interleave(topk))
            first += tokens[-2].shape[0]
            features = out.hidden[0].repeat_interleave(topk, dim=0)
            ancestors = torch.cat((frontier_ancestors, own), dim=1).repeat_interleave(topk, dim=0)
        return torch.cat(tokens), torch.cat(all_scores), torch.cat(parents)


def _compilable(past_k: torch.Tensor | None) -> bool:
    """Compiled graphs take the committed keys' count as a dynamic dimension, which cannot be 0 or 1 (torch
    specializes those sizes): a sequence's first inputs run eagerly."""
    return past_k is not None and past_k.shape[1] >= 2


def _mark_key_lengths(name: str, args: tuple) -> None:
    """The committed keys' count varies step by step: a dynamic dimension, so the context needs no new graph."""
    past_k, past_v = (args[3], args[4]) if name == "catch_up" else (args[0], args[1])
    torch._dynamo.mark_dynamic(past_k, 1)
    torch._dynamo.mark_dynamic(past_v, 1)
