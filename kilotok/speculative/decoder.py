"""One speculative decode step for the running batch: draft, verify in one target forward, accept,
and keep only the accepted path in the KV cache.

The root of each tree is the sequence's last sampled token, which is not yet cached; it and the nodes
are written to the slots of positions len(seq) - 1, len(seq), ... in node order. After acceptance the
accepted node at depth d moves to the slot of position len(seq) - 1 + d (accepted nodes only ever
move to earlier slots, never onto a later accepted node's), so the cache holds exactly the tokens a
plain decode would have written, and whatever else the tree wrote lies beyond the new length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kilotok.engine.model_runner import ModelRunner
from kilotok.engine.sequence import Sequence
from kilotok.layers.sampler import SamplingTensors, processed_probs
from kilotok.speculative.drafter import Drafter
from kilotok.speculative.policy import SpecPolicy
from kilotok.speculative.tree import DraftTree
from kilotok.speculative.verify import Verdict, verify_greedy, verify_sampled


@dataclass
class SpecStepResult:
    tokens: list[int]
    """Accepted tokens then the bonus token, in order; the engine applies stop rules one by one."""
    drafted: int
    max_depth: int
    accepted: int
    aux_hidden: torch.Tensor | None
    """[accepted + 1, k * d]: target features of the root and the accepted nodes, for the drafter."""


class SpeculativeDecoder:
    def __init__(self, runner: ModelRunner, drafter: Drafter, policy: SpecPolicy, max_model_len: int) -> None:
        self.runner = runner
        self.drafter = drafter
        self.policy = policy
        self.max_model_len = max_model_len

    def step(self, seqs: list[Sequence]) -> list[SpecStepResult]:
        trees = self._fitted_trees(seqs, self._draft(seqs))
        if not any(trees) and not self.drafter.aux_layer_ids:
            # Nothing to verify and no features wanted: the (compiled) plain decode step is cheaper.
            tokens = self.runner.run(seqs, is_prefill=False).tolist()
            return [SpecStepResult([token], 0, 0, 0, None) for token in tokens]
        logits, aux = self.runner.verify(seqs, trees)
        results = []
        for row, (seq, tree) in enumerate(zip(seqs, trees, strict=True)):
            verdict = self._verdict(seq, tree, logits[row, : len(tree) + 1])
            self._keep_accepted_kv(seq, verdict)
            seq.num_cached_tokens = len(seq) + len(verdict.accepted)
            rows = [0] + [node + 1 for node in verdict.accepted]
            results.append(SpecStepResult(verdict.tokens(tree), len(tree), tree.max_depth, len(verdict.accepted),
                                          None if aux is None else aux[row, rows]))
        return results

    def _draft(self, seqs: list[Sequence]) -> list[DraftTree]:
        """Trees for the sequences that speculate, at the size the policy gives this batch; empty trees
        for the rest (they still verify their root, so the drafter keeps their features)."""
        shape = self.policy.shape_for(len(seqs))
        drafting = [seq for seq in seqs if seq.params.speculate] if shape is not None else []
        proposed = dict(zip((seq.seq_id for seq in drafting), self.drafter.propose(drafting, shape), strict=True)
                        ) if drafting else {}
        return [proposed.get(seq.seq_id, DraftTree()) for seq in seqs]

    def _fitted_trees(self, seqs: list[Sequence], trees: list[DraftTree]) -> list[DraftTree]:
        """Trim trees so that no node (padding included) lies past the context window or the blocks the
        scheduler reserved, and no path is longer than the tokens the request may still emit."""
        room = min(min(self.max_model_len, len(seq.block_table) * self.runner.block_size) - len(seq)
                   for seq in seqs)
        fitted = []
        for seq, tree in zip(seqs, trees, strict=True):
            remaining = seq.params.max_tokens - seq.num_output_tokens
            fitted.append(tree.truncated(max(room, 0), max(remaining - 1, 0)))
        return fitted

    def _verdict(self, seq: Sequence, tree: DraftTree, logits: torch.Tensor) -> Verdict:
        if seq.params.greedy:
            return verify_greedy(tree, logits)
        sampling = SamplingTensors.from_params([seq.params] * logits.shape[0], logits.device)
        return verify_sampled(tree, processed_probs(logits, sampling), seq.generator)

    def _keep_accepted_kv(self, seq: Sequence, verdict: Verdict) -> None:
        root = len(seq) - 1
        moves = [(root + 1 + node, root + depth)
                 for depth, node in enumerate(verdict.accepted, start=1) if node + 1 != depth]
        self.runner.copy_kv([self.runner.slot_of(seq, src) for src, _ in moves],
                            [self.runner.slot_of(seq, dst) for _, dst in moves])
