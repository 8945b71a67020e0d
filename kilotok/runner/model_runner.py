"""Runs rows of tokens through the model on its device: builds a step's inputs from its sequences (flat
token rows, their positions, and the `AttentionMetadata` that says where each row's keys and values live
in the paged cache), owns the KV cache and the compiled decode graphs, and samples. It reads sequences
but never changes them, and returns tensors without reading them back, so on a GPU the host can prepare
the next step while this one runs.

Two kinds of forward: `prefill` runs prompt chunks (any number of tokens per sequence), and decode
forwards run rows that are each one query over its own sequence's keys, through a compiled graph per
padded row count, called without dynamo's guards once built (CPU, runner/compiled_step.py), or a
captured CUDA graph (runner/cuda_graphs.py). The PyTorch reference attends
through a gathered key window per row; the Triton kernels read the block table itself, so with them no
window is built. A plain decode step is such rows, one per sequence; speculative verification builds its
own rows (kilotok/speculative/verify_inputs.py) and runs them through the same graphs.
The step inputs themselves are built in runner/step_inputs.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import replace

import torch
from tqdm import tqdm

from kilotok.kernels.attention import KEY_WINDOW_ALIGN
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.kernels.backend import KernelBackend
from kilotok.layers.sampler import Sampler
from kilotok.models.causal_lm import CausalLM
from kilotok.runner.compiled_step import CompiledStep
from kilotok.runner.cuda_graphs import DecodeGraphs, GraphCapture, capture_cuda_graph
from kilotok.runner.step_inputs import (
    PADDING_BLOCK,
    chunked_key_window,
    decode_key_window,
    token_rows,
    warm_up_rows,
)
from kilotok.sequence import Sequence

DECODE_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _bucket(rows: int) -> int:
    """The decode graph size that `rows` query rows are padded to."""
    return next((b for b in DECODE_BATCH_BUCKETS if b >= rows), rows)


class ModelRunner:
    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, max_model_len: int,
                 compile_decode: bool, backend: KernelBackend = KernelBackend.TORCH) -> None:
        """`backend`: the kernels the model was built with, which the sampler uses too."""
        self.model = model
        self.block_size = block_size
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.device = next(model.parameters()).device
        self.sampler = Sampler(backend)
        # Only the PyTorch reference attends through a gathered key window; Triton reads the block table.
        self.gathers_key_window = backend is not KernelBackend.TRITON
        self._graphs: DecodeGraphs | None = None
        self._verify_graphs: DecodeGraphs | None = None
        self._allocate_kv_cache(num_blocks)
        # Two decode forwards, compiled apart: with the drafter's features and without, so a step that does
        # not draft returns none (speculative/decoder.py).
        self._eager_forwards = {False: self._forward_logits, True: self._forward_logits_and_features}
        self._decode_forwards = self._eager_forwards
        if compile_decode:
            self._decode_forwards = {features: CompiledStep(forward)
                                     for features, forward in self._eager_forwards.items()}
        self._compile_failed = not compile_decode
        self._warm_buckets: set[tuple[int, bool]] = set()
        """(rows, with features) of the compiled graphs built so far."""
        self._feature_layers: tuple[int, ...] = ()
        self._feature_order: list[int] = []

    @staticmethod
    def kv_bytes_per_block(model: CausalLM, block_size: int) -> int:
        config = model.config
        per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * model.kv_cache_dtype.itemsize
        return block_size * per_token

    def _allocate_kv_cache(self, num_blocks: int) -> None:
        config = self.model.config
        self.model.allocate_kv_cache((num_blocks, self.block_size, config.num_kv_heads, config.head_dim), self.device)

    def collect_features(self, layer_ids: tuple[int, ...]) -> None:
        """Have prefills, and decode forwards that ask for them, also return the hidden states entering
        `layer_ids` (a drafter's features), concatenated in that order; an id may repeat, the model collects
        each layer once."""
        unique = sorted(set(layer_ids))
        self._feature_layers = tuple(unique)
        self._feature_order = [unique.index(layer) for layer in layer_ids]

    def _concat_features(self, aux: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([aux[index] for index in self._feature_order], dim=-1)

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence], num_new_tokens: list[int]
                ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Sequence i runs num_new_tokens[i] tokens from its num_cached_tokens on. Returns the next token
        [S] of the S sequences whose chunk reaches their end, in batch order (the others have no logits to
        sample yet), and, when features are collected, each sequence's features [new tokens, k * d]."""
        ends = [seq.num_cached_tokens + count for seq, count in zip(seqs, num_new_tokens, strict=True)]
        inputs = token_rows(seqs, ends, len(seqs), self.block_size, self.max_blocks_per_seq, self.device)
        hidden, aux = self.model(inputs.input_ids, inputs.positions, inputs.meta, aux_layers=self._feature_layers)
        features = list(self._concat_features(aux).split(num_new_tokens)) if aux else None
        complete = [row for row, (seq, end) in enumerate(zip(seqs, ends, strict=True)) if end == len(seq)]
        if not complete:
            return torch.empty(0, dtype=torch.int64, device=self.device), features
        logits = self.model.compute_logits(hidden[inputs.last_rows[complete]])
        return self.sample([seqs[row] for row in complete], logits), features

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence], features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run each sequence's last token (not yet cached) and sample the next one: [B] int64, and, when
        `features` asks for them and they are collected, the rows' features [B, k * d]."""
        padded = _bucket(len(seqs))
        inputs = token_rows(seqs, [len(seq) for seq in seqs], padded, self.block_size, self.max_blocks_per_seq,
                            self.device)
        meta = inputs.meta
        if self.gathers_key_window:
            meta.kv_gather_index, meta.kv_valid = decode_key_window(seqs, padded, self.block_size, self.device)
        logits, rows_features = self.decode_rows(inputs.input_ids, inputs.positions, meta, features)
        return self.sample(seqs, logits[: len(seqs)]), None if rows_features is None else rows_features[: len(seqs)]

    def sample(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        return self.sampler.for_requests(logits, [seq.params for seq in seqs], [seq.generator for seq in seqs])

    @torch.inference_mode()
    def decode_rows(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                    features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [R, V] of R rows that each query their own sequence's keys (through `meta.kv_gather_index`
        where the backend needs it), and their features when `features` asks for them and they are collected
        (else None); R should be `padded_rows` of the real row count. Logits may be a captured graph's
        output: read them before the next decode forward."""
        meta = replace(meta, decode_rows=True)
        features = features and bool(self._feature_layers)
        graphs = self._graphs if meta.tree_mask is None else self._verify_graphs
        if graphs is not None:
            outputs = graphs.run(input_ids, positions, meta)
            if outputs is not None:
                logits, captured = outputs
                # Features outlive the step (a drafter keeps them); the next replay would overwrite them.
                return logits, captured.clone() if features and captured is not None else None
        if meta.kv_gather_index is not None:
            meta = chunked_key_window(meta)
        if self._compile_failed:
            return self._eager_forwards[features](input_ids, positions, meta)
        try:
            outputs = self._decode_forwards[features](input_ids, positions, meta)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
            print(f"kilotok: torch.compile unavailable ({type(error).__name__}: {error}); running eager",
                  file=sys.stderr)
            self._compile_failed = True
            return self._eager_forwards[features](input_ids, positions, meta)
        self._warm_buckets.add((input_ids.shape[0], features))
        return outputs

    def padded_rows(self, rows: int, features: bool = False) -> int:
        """The row count to pad `rows` decode rows to. A compiled graph already built for up to 4x the rows
        beats compiling a new one, which is slow on a small CPU: draft trees cut short near max_tokens
        would otherwise each compile their own size. CUDA graphs are captured for the buckets themselves."""
        bucket = _bucket(rows)
        features = features and bool(self._feature_layers)
        warm = [b for b, with_features in self._warm_buckets if with_features == features and bucket <= b <= 4 * bucket]
        return min(warm, default=bucket)

    @torch.inference_mode()
    def compile_buckets(self, row_counts: Iterable[int], progress: bool = False) -> None:
        """Build now the compiled plain decode graph (no features) of each of `row_counts`' buckets, so that a
        server never stalls its running requests to compile one when the batch first grows. A speculative
        decoder's other graphs are built by running its steps (`SpeculativeDecoder.warm_up`)."""
        if self._compile_failed:
            return
        window = KEY_WINDOW_ALIGN if self.gathers_key_window else 0
        buckets = sorted({_bucket(rows) for rows in row_counts})
        for bucket in tqdm(buckets, desc="compiling decode steps", disable=not progress, leave=False):
            self.decode_rows(*warm_up_rows(bucket, self.block_size, self.max_blocks_per_seq, window, self.device))

    @torch.inference_mode()
    def capture_decode_graphs(self, max_rows: int, capture: GraphCapture = capture_cuda_graph,
                              progress: bool = True, verify: tuple[int, int] | None = None) -> list[int]:
        """Capture the eager decode step for every bucket up to the one holding `max_rows` rows, replayed from
        then on; larger row counts run as before. `verify` (rows, tree width): also capture verification
        rows with draft trees up to that width, for every bucket up to the one holding that many rows.
        Needs a backend whose decode attention reads the block table (Triton): a gathered key window's
        length changes every step. Features must be chosen first (`collect_features`): the graphs return
        what the step returned when captured. Returns the plain decode sizes captured, none where capturing
        failed (the step then runs eagerly, as the compile path falls back)."""
        if self.gathers_key_window:
            raise ValueError("CUDA graphs need the Triton backend: the PyTorch reference's key window changes "
                             "shape every step")
        sizes = [b for b in DECODE_BATCH_BUCKETS if b <= _bucket(max_rows)]
        # With the drafter's features whenever they are collected; steps that ask for none ignore them.
        captured_forward = self._eager_forwards[bool(self._feature_layers)]
        try:
            self._graphs = DecodeGraphs(captured_forward, sizes, self.max_blocks_per_seq, PADDING_BLOCK,
                                        self.block_size, self.device, capture, progress)
            if verify is not None:
                verify_rows, tree_width = verify
                self._verify_graphs = DecodeGraphs(
                    captured_forward, [b for b in DECODE_BATCH_BUCKETS if b <= _bucket(verify_rows)],
                    self.max_blocks_per_seq, PADDING_BLOCK, self.block_size, self.device, capture, progress,
                    tree_width, pool=self._graphs.pool)
        except RuntimeError as error:
            print(f"kilotok: capturing CUDA graphs failed ({error}); running the decode step eagerly",
                  file=sys.stderr)
            self._graphs = self._verify_graphs = None
            return []
        return sizes

    def copy_kv(self, src_slots: torch.Tensor, dst_slots: torch.Tensor) -> None:
        """Copy every layer's keys and values from cache slots `src_slots` to `dst_slots` (int64, on the
        runner's device; a destination may repeat only with what it already holds)."""
        if not src_slots.numel():
            return
        for layer in self.model.layers:
            for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
                flat = cache.view(-1, *cache.shape[2:])
                flat.index_copy_(0, dst_slots, flat.index_select(0, src_slots))

    def close(self) -> None:
        """Release what the runner holds beyond memory (a parallel runner's other ranks)."""

    def _forward_logits(self, input_ids: torch.Tensor, positions: torch.Tensor,
                        meta: AttentionMetadata) -> tuple[torch.Tensor, None]:
        hidden, _ = self.model(input_ids, positions, meta)
        return self.model.compute_logits(hidden), None

    def _forward_logits_and_features(self, input_ids: torch.Tensor, positions: torch.Tensor,
                                     meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, aux = self.model(input_ids, positions, meta, aux_layers=self._feature_layers)
        return self.model.compute_logits(hidden), self._concat_features(aux)
