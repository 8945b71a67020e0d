"""A verify step's device work on either side of the target's forward, as graphs that `torch.compile`
builds once per shape: the rows built from the trees before it, and after it the greedy acceptance with
the K/V moves and the verdicts' summary. The logits' argmax stays outside the graph (kernels/argmax.py):
a compiled step's reductions run on one thread (CPU_STEP_OPTIONS), scalar where they track an index.

Eagerly these are a few hundred small tensor ops a step, each dispatched on its own; on a small CPU
that dispatch, not the arithmetic, is their cost, and one graph each does the same work in a handful of
kernels. The key window's width, which grows with the context, is a dynamic dimension, so a graph serves
every context length of its (batch, tree width, padded rows). As the target's decode graphs are, each is
called without dynamo's guards once built (runner/compiled_step.py). Sampled acceptance stays eager: its
uniforms come from each request's own generator.

Only steps whose trees fill the drafter's tree size are compiled (`DraftTrees.full`: every EAGLE-3 step
but those near the end of the context; prompt lookup's steps that found a whole chain). The rest run
eagerly: each of their widths and depths would be a graph of its own, seconds of compiling on a small
CPU for a shape that may not come back.
"""

from __future__ import annotations

from functools import partial

import torch

from kilotok.kernels.argmax import argmax_rows
from kilotok.runner.compiled_step import CompiledCalls
from kilotok.sequence import Sequence
from kilotok.speculative.tree import DraftTrees
from kilotok.speculative.verify import TreeRows, accept_greedy
from kilotok.speculative.verify_inputs import VerifyBatch, build_verify_inputs, kv_moves, tree_rows


class VerifySteps:
    def __init__(self, compile_steps: bool) -> None:
        self.calls = CompiledCalls({"rows": self._rows, "greedy": self._greedy}, compile_steps, "verification")

    def build(self, seqs: list[Sequence], trees: DraftTrees, width: int, padded_rows: int, block_size: int,
              max_blocks: int, device: torch.device, key_windows: bool) -> VerifyBatch:
        """`build_verify_inputs` (speculative/verify_inputs.py), through the compiled graph of its shape
        when the trees are `full`."""
        return build_verify_inputs(seqs, trees, width, padded_rows, block_size, max_blocks, device, key_windows,
                                   rows=partial(self._tree_rows, trees.full))

    def greedy(self, batch: VerifyBatch, logits: torch.Tensor,
               compiled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The greedy verdicts of `batch`'s trees, given the target's logits [B, W, V] at their rows: the
        `Acceptance.summary` and the K/V moves (source and destination slots). `compiled`: as the trees
        were `full`."""
        torch._dynamo.mark_dynamic(batch.slots, 1)
        return self._call(compiled, "greedy", batch.trees, batch.roots, batch.slots, argmax_rows(logits))

    def _tree_rows(self, compiled: bool, sequences: torch.Tensor, tree_tokens: torch.Tensor,
                   tree_parents: torch.Tensor, keys: torch.Tensor,
                   *shape: int | bool) -> tuple[torch.Tensor | None, ...]:
        """`tree_rows`, through `build_verify_inputs`, with the key window's width a dynamic dimension."""
        torch._dynamo.mark_dynamic(keys, 0)
        return self._call(compiled, "rows", sequences, tree_tokens, tree_parents, keys, *shape)

    def _call(self, compiled: bool, name: str, *args):
        return self.calls(name, *args) if compiled else self.calls.eager[name](*args)

    def _rows(self, sequences: torch.Tensor, tree_tokens: torch.Tensor, tree_parents: torch.Tensor,
              keys: torch.Tensor, width: int, max_depth: int, padded_rows: int, block_size: int,
              key_windows: bool) -> tuple[torch.Tensor | None, ...]:
        # A method with named arguments: a compiled step replays a bound method's arguments by name.
        return tree_rows(sequences, tree_tokens, tree_parents, keys, width, max_depth, padded_rows, block_size,
                         key_windows)

    def _greedy(self, trees: TreeRows, roots: torch.Tensor, slots: torch.Tensor,
                argmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        acceptance = accept_greedy(trees, argmax)
        return (acceptance.summary(), *kv_moves(roots, slots, acceptance))
