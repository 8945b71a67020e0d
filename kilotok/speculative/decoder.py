"""Speculative decoding as a decoder: it wraps the plain decoder of the target and, for decoding
sequences, drafts a tree, verifies it in one target forward, accepts, and keeps only the accepted path
in the KV cache. Prompt chunks go through the plain decoder; the drafter gets their features.

The root of each tree is the sequence's last sampled token, which is not yet cached; it and the nodes
are written to the slots of positions len(seq) - 1, len(seq), ... in node order. After acceptance the
accepted node at depth d moves to the slot of position len(seq) - 1 + d (accepted nodes only ever
move to earlier slots, never onto a later accepted node's), so the cache holds exactly the tokens a
plain decode would have written, and whatever else the tree wrote lies beyond the new length.

Where the policy picks no tree for the batch size, the step is the plain decode step: the compiled graph
without features, and no drafter work. A drafter that reads features gets them from every step at a batch
size that drafts, and starts drafting for a sequence once it has its newest position's (the step after
drafting resumes); positions decoded in between, and cached prompt blocks, are gaps its head skips. When
the policy drafts at no batch size the engine can run, the target's features are never collected.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from kilotok.layers.sampler import SamplingTensors, processed_probs
from kilotok.models.causal_lm import CausalLM
from kilotok.runner.decoder import Decoder, DraftOutcome, PlainDecoder, ScheduledBatch, StepResult
from kilotok.runner.step_inputs import PADDING_BLOCK
from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.drafter import Drafter
from kilotok.speculative.ngram import NgramDrafter
from kilotok.speculative.policy import SpecPolicy, TreeShape
from kilotok.speculative.tree import DraftTrees
from kilotok.speculative.verify import Verdict, accept_sampled, read_verdicts
from kilotok.speculative.verify_inputs import VerifyBatch, kv_moves, verify_width
from kilotok.speculative.verify_steps import VerifySteps


class SpeculativeDecoder:
    def __init__(self, target: PlainDecoder, drafter: Drafter, policy: SpecPolicy, max_model_len: int,
                 lookahead_slots: int, max_num_seqs: int, compile_steps: bool = False) -> None:
        """`max_num_seqs`: the largest batch the scheduler forms, beyond which the policy never applies;
        `compile_steps`: build the verify inputs and accept through compiled graphs (verify_steps.py)."""
        self.target = target
        self.runner = target.runner
        self.drafter = drafter
        self.max_model_len = max_model_len
        self.lookahead_slots = lookahead_slots
        self.max_num_seqs = max_num_seqs
        self.policy = policy
        self.verify_steps = VerifySteps(compile_steps)

    @property
    def policy(self) -> SpecPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: SpecPolicy) -> None:
        """A policy may be swapped between requests (`kilotok bench spec-policy` does): features are collected
        from the first one that drafts at some batch size on."""
        self._policy = policy
        self.drafts = policy.drafts_up_to(self.max_num_seqs)
        if self.drafts and self.drafter.aux_layer_ids:
            self.runner.collect_features(self.drafter.aux_layer_ids)

    def step(self, batch: ScheduledBatch) -> list[StepResult]:
        results = self.decode(batch.decode_seqs) if batch.num_decodes else []
        if batch.has_prefill:
            results += self.prefill(batch.prefill_part())
        return results

    def release(self, seq: Sequence) -> None:
        self.drafter.release(seq)

    def warm_up(self, max_num_seqs: int, progress: bool = False) -> None:
        """The plain decode graphs of the batch sizes that do not draft; at each size that does, the steps
        a request goes through, over as many warm-up sequences: the prompt, the drafter's own warm-up, a
        whole speculative step (its tree fills the shape, so verification runs its compiled graphs), then
        a step whose trees came out empty (the plain decode graph with features)."""
        sizes = range(1, max_num_seqs + 1)
        shapes = {batch: shape for batch in sizes if self.drafts and (shape := self.policy.shape_for(batch))}
        self.runner.compile_buckets([batch for batch in sizes if batch not in shapes], progress)
        # The prompt, the token after it and a whole tree must fit in the context window.
        length = min(WARM_UP_PROMPT, self.max_model_len - 1 - self.lookahead_slots)
        if length < 2:
            return  # a window this small holds no tree worth compiling for
        for batch, shape in tqdm(shapes.items(), desc="compiling speculative steps", disable=not progress,
                                 leave=False):
            seqs = warm_up_sequences(batch, length + 1, shape, self.runner.model.config.vocab_size,
                                     self.runner.max_blocks_per_seq)
            # The prompt's chunk stops short of the last token, which stands for the one sampled after it.
            self.prefill(ScheduledBatch(seqs, [length] * batch, [False] * batch, 0))
            for seq in seqs:
                seq.num_cached_tokens = length
            self.drafter.warm_up(seqs, shape)
            self.decode(seqs)
            self._plain_step(seqs, features=True)
            for seq in seqs:
                self.release(seq)

    def prefill(self, batch: ScheduledBatch) -> list[StepResult]:
        starts = [seq.num_cached_tokens for seq in batch.seqs]
        results, features = self.target.prefill(batch)
        if not self.drafts:
            return results
        for row, (seq, start, result) in enumerate(zip(batch.seqs, starts, results, strict=True)):
            self.drafter.prefilled(seq, start, None if features is None else features[row],
                                   result.tokens[0] if result.tokens else None)
        return results

    def decode(self, seqs: list[Sequence]) -> list[StepResult]:
        shape = self.policy.shape_for(len(seqs)) if self.drafts else None
        if shape is None:
            return self._plain_step(seqs, features=False)
        trees = self._draft(seqs, shape).fitted(self._max_nodes(seqs))
        if not any(trees.sizes):
            return self._plain_step(seqs, features=True)
        features, verdicts = self._verify(seqs, trees)
        results = []
        for row, (seq, size, verdict) in enumerate(zip(seqs, trees.sizes, verdicts, strict=True)):
            # A path past max_tokens is cut here: the request finishes with this step.
            tokens = verdict.tokens[: seq.params.max_tokens - seq.num_output_tokens]
            kept_rows = ([0] + [node + 1 for node in verdict.accepted])[: len(tokens)]
            self.drafter.verified(seq, tokens, None if features is None else features[row, kept_rows])
            outcome = DraftOutcome(size, verdict.tree_depth, min(len(verdict.accepted), len(tokens)))
            results.append(StepResult(tokens, len(tokens), outcome))
        return results

    def _plain_step(self, seqs: list[Sequence], features: bool) -> list[StepResult]:
        """Nothing to verify: the plain decode step. With `features` (the batch size drafts, the trees were
        empty) the drafter gets them, so it can draft at the next step; without, it is not called."""
        tokens, rows_features = self.runner.decode(seqs, features)
        tokens = tokens.tolist()
        if features:
            for row, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
                self.drafter.verified(seq, [token], None if rows_features is None else rows_features[row : row + 1])
        return [StepResult([token], 1, DraftOutcome(0, 0, 0)) for token in tokens]

    def _draft(self, seqs: list[Sequence], shape: TreeShape) -> DraftTrees:
        """Trees for the sequences that speculate, at the size the policy gives this batch; empty trees
        for the rest (they still verify their root, so the drafter keeps their features)."""
        drafting = [row for row, seq in enumerate(seqs) if seq.params.speculate]
        if not drafting:
            return DraftTrees.empty(len(seqs), self.runner.device)
        return self.drafter.propose([seqs[row] for row in drafting], shape).placed(drafting, len(seqs))

    def _max_nodes(self, seqs: list[Sequence]) -> list[int]:
        """Each sequence's node limit: no node (padding included) may lie past the context window or the
        blocks the scheduler reserved, and a request with one token left drafts none. A deeper path than
        a request may still emit is cut after verification."""
        room = min(min(self.max_model_len, len(seq.block_table) * self.runner.block_size) - len(seq)
                   for seq in seqs)
        return [max(room, 0) if seq.params.max_tokens - seq.num_output_tokens > 1 else 0 for seq in seqs]

    def _verify(self, seqs: list[Sequence], trees: DraftTrees) -> tuple[torch.Tensor | None, list[Verdict]]:
        """One forward over each sequence's root and tree, then acceptance and the accepted K/V moved into
        place, on the device; returns the features [B, width, k * d] when collected (row 0 the root's, row
        i + 1 node i's, then padding) and each tree's verdict, read back in one copy. Every row is a decode
        query over its own key window, so the forward runs the compiled decode graph of its row count."""
        runner = self.runner
        width = verify_width(trees)
        rows = len(seqs) * width
        batch = self.verify_steps.build(seqs, trees, width, runner.padded_rows(rows, features=True), runner.block_size,
                                        runner.max_blocks_per_seq, runner.device, runner.gathers_key_window)
        logits, features = runner.decode_rows(batch.input_ids, batch.positions, batch.meta, features=True)
        features = None if features is None else features[:rows].view(len(seqs), width, -1)
        summary, sources, destinations = self._accept(seqs, batch, logits[:rows].view(len(seqs), width, -1),
                                                      trees.full)
        verdicts = read_verdicts(summary)
        # A path of first children (a chain's always) is already in place: then no copy over every layer.
        if any(verdict.out_of_place for verdict in verdicts):
            runner.copy_kv(sources, destinations)
        return features, verdicts

    def _accept(self, seqs: list[Sequence], batch: VerifyBatch, logits: torch.Tensor,
                full: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The verdicts' summary and the K/V moves, on the device: the greedy walk when every request is
        greedy (compiled for `full` trees), else sequential rejection against each row's processed
        distribution (one-hot for greedy requests)."""
        if all(seq.params.greedy for seq in seqs):
            return self.verify_steps.greedy(batch, logits, full)
        size, width, _ = logits.shape
        sampling = SamplingTensors.from_params([seq.params for seq in seqs for _ in range(width)], logits.device)
        probs = processed_probs(logits.flatten(0, 1), sampling).view(size, width, -1)
        acceptance = accept_sampled(batch.trees, probs, [seq.generator for seq in seqs])
        return acceptance.summary(), *kv_moves(batch.roots, batch.slots, acceptance)


WARM_UP_PROMPT = 32
"""Tokens of a warm-up sequence's prompt where the context window allows: enough for each of the drafter's
compiled row counts to catch up on earlier positions, and for prompt lookup to find a whole chain."""


def warm_up_sequences(count: int, length: int, shape: TreeShape, vocab_size: int,
                      max_blocks: int) -> list[Sequence]:
    """`count` greedy sequences of `length` tokens that repeat a pattern longer than the tree is deep
    (prompt lookup then proposes a whole chain) and whose blocks are all the padding block: what a step
    writes there is thrown away, as padding rows' keys and values are."""
    period = max(1, min(shape.depth + 1, vocab_size - 1))
    prompt = [1 + position % period for position in range(length)]
    params = SamplingParams(temperature=0.0, max_tokens=WARM_UP_PROMPT, ignore_eos=True)
    return [Sequence(prompt, params, block_table=[PADDING_BLOCK] * max_blocks) for _ in range(count)]


def build_decoder(spec: SpecConfig, target: PlainDecoder, model: CausalLM, model_name: str,
                  max_model_len: int, max_num_seqs: int, compile_steps: bool) -> Decoder:
    """The decoder a SpecConfig asks for: `target` itself without speculation. `compile_steps`: compile the
    draft head's steps, as the target's decode steps are."""
    if not spec.enabled:
        return target
    if spec.method == "ngram":
        drafter: Drafter = NgramDrafter(spec.ngram_min, spec.ngram_max, spec.depth)
    else:
        from kilotok.speculative.eagle3.drafter import Eagle3Drafter

        drafter = Eagle3Drafter.load(spec, model, model_name, compile_steps)
    return SpeculativeDecoder(target, drafter, spec.tree_policy(model_name, target.runner.device), max_model_len,
                              spec.max_draft_nodes, max_num_seqs, compile_steps)
