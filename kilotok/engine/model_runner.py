"""Runs one scheduled batch through the model: builds the step's inputs, owns the KV cache and the
compiled decode step, and samples. It returns sampled tokens as a tensor and never reads it back, so on
a GPU the host can prepare the next step while this one runs."""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

from kilotok.engine.block_manager import PADDING_BLOCK
from kilotok.engine.sequence import Sequence
from kilotok.kernels.attention import KEY_WINDOW_ALIGN, VALUE_CHUNK, aligned_window
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.layers.sampler import Sampler, SamplingTensors
from kilotok.models.llama import LlamaForCausalLM
from kilotok.speculative.tree import DraftTree
from kilotok.speculative.verify_inputs import build_verify_inputs, verify_width

DECODE_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _bucket(rows: int) -> int:
    """The decode graph size that `rows` query rows are padded to."""
    return next((b for b in DECODE_BATCH_BUCKETS if b >= rows), rows)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int, max_model_len: int,
                 compile_decode: bool) -> None:
        self.model = model
        self.block_size = block_size
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.device = next(model.parameters()).device
        self.sampler = Sampler()
        self._allocate_kv_cache(num_blocks)
        self._decode_forward = self._forward_logits
        if compile_decode:
            # At batch 1 the fused elementwise kernels are tiny: spreading them over OpenMP threads costs
            # more in barriers than it saves (measured 2x slower with 2 threads). Matrix products still
            # use every thread through ATen.
            # Dynamo counts graphs per code object, across every engine in the process: one graph per batch
            # bucket per engine would pass its default limit of 8 and silently fall back to eager.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 128)
            self._decode_forward = torch.compile(self._forward_logits, dynamic=False,
                                                 options={"cpp.threads": 1})
        self._compile_failed = not compile_decode
        self._warm_buckets: set[int] = set()
        self._aux_order: list[int] = []

    def collect_aux_hidden(self, layer_ids: tuple[int, ...]) -> None:
        """Have forwards also return the hidden states entering `layer_ids`, concatenated in that order
        (an id may repeat; the model itself collects each layer once, in layer order)."""
        unique = sorted(set(layer_ids))
        self.model.aux_hidden_layers = tuple(unique)
        self._aux_order = [unique.index(layer) for layer in layer_ids]

    def _concat_aux(self, aux: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([aux[index] for index in self._aux_order], dim=-1)

    def _allocate_kv_cache(self, num_blocks: int) -> None:
        # One tensor per layer and per K/V, not views of one big buffer: a compiled step that writes into
        # views of a shared base would have the whole base copied around every step.
        config = self.model.config
        shape = (num_blocks, self.block_size, config.num_kv_heads, config.head_dim)
        for layer in self.model.layers:
            attention = layer.self_attn
            attention.k_cache = torch.zeros(shape, dtype=self.model.activation_dtype, device=self.device)
            attention.v_cache = torch.zeros(shape, dtype=self.model.activation_dtype, device=self.device)

    @staticmethod
    def kv_bytes_per_block(model: LlamaForCausalLM, block_size: int) -> int:
        config = model.config
        element_size = torch.empty(0, dtype=model.activation_dtype).element_size()
        return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * element_size

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool) -> torch.Tensor:
        """Process every uncached token of `seqs` and sample one next token per sequence: [B] int64."""
        if is_prefill:
            return self.prefill(seqs)[0]
        padded = _bucket(len(seqs))
        input_ids, positions, meta, _ = self._prepare(seqs, padded_batch=padded)
        meta.kv_gather_index, meta.kv_valid = self._decode_key_window(seqs, padded)
        logits, _ = self._run_decode(input_ids, positions, meta)
        return self._sample(seqs, logits[: len(seqs)])

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence], num_new_tokens: list[int] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Like `run` for a prefill batch, where a sequence may run only a chunk: sequence i runs
        num_new_tokens[i] tokens from its num_cached_tokens on (default: all the rest). Returns the next
        token [S] of the S sequences whose chunk reaches their end, in batch order (the others have no
        logits to sample yet), and, when the model collects them, each sequence's auxiliary hidden
        states [new tokens, k * d] (the aux layers' inputs concatenated)."""
        counts = num_new_tokens or [len(seq) - seq.num_cached_tokens for seq in seqs]
        ends = [seq.num_cached_tokens + count for seq, count in zip(seqs, counts, strict=True)]
        input_ids, positions, meta, last_rows = self._prepare(seqs, len(seqs), ends)
        hidden, aux = self.model(input_ids, positions, meta)
        aux_rows = list(self._concat_aux(aux).split(counts)) if aux else None
        complete = [row for row, (seq, end) in enumerate(zip(seqs, ends, strict=True)) if end == len(seq)]
        for seq, end in zip(seqs, ends, strict=True):
            seq.num_cached_tokens = end
        if not complete:
            return torch.empty(0, dtype=torch.int64, device=self.device), aux_rows
        logits = self.model.compute_logits(hidden[last_rows[complete]])
        return self._sample([seqs[row] for row in complete], logits), aux_rows

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        for seq in seqs:
            seq.num_cached_tokens = len(seq)
        sampling = SamplingTensors.from_params([seq.params for seq in seqs], self.device)
        return self.sampler(logits, sampling, [seq.generator for seq in seqs])

    @torch.inference_mode()
    def verify(self, seqs: list[Sequence], trees: list[DraftTree]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward over each sequence's last token (the root, not yet cached) and its draft tree
        (see spec/verify_inputs.py). Returns the logits [B, width, V] (row 0 the root's, row i + 1 node
        i's, then padding) and, when the model collects them, the auxiliary hidden states
        [B, width, k * d]; the caller keeps the accepted K/V (`copy_kv`) and sets num_cached_tokens."""
        width = verify_width(trees)
        rows = len(seqs) * width
        padded_rows = self._verify_bucket(rows)
        input_ids, positions, meta = build_verify_inputs(seqs, trees, width, padded_rows, self.block_size,
                                                         self.max_blocks_per_seq, self.device)
        # Every row is a decode query over its own key window, so verification runs the compiled decode
        # graph of its row bucket: no extra graphs to build, and the same kernels as plain decoding.
        logits, aux = self._run_decode(input_ids, positions, meta)
        aux_rows = None if aux is None else aux[:rows].view(len(seqs), width, -1)
        return logits[:rows].view(len(seqs), width, -1), aux_rows

    @torch.inference_mode()
    def compile_buckets(self, max_rows: int) -> None:
        """Build the compiled decode graph of every bucket up to `max_rows` now (a minute each on two cores),
        so a server never stalls its running requests to compile one when the batch first grows."""
        if self._compile_failed:
            return
        padding_slot = PADDING_BLOCK * self.block_size
        for bucket in (b for b in DECODE_BATCH_BUCKETS if b < 2 * max_rows):
            valid = torch.zeros((bucket, KEY_WINDOW_ALIGN), dtype=torch.bool, device=self.device)
            valid[:, 0] = True
            meta = AttentionMetadata(
                slot_mapping=torch.full((bucket,), padding_slot, dtype=torch.int64, device=self.device),
                block_tables=torch.full((bucket, self.max_blocks_per_seq), PADDING_BLOCK, dtype=torch.int32,
                                        device=self.device),
                context_lens=torch.ones(bucket, dtype=torch.int32, device=self.device),
                query_start_loc=torch.arange(bucket + 1, dtype=torch.int32, device=self.device),
                kv_gather_index=torch.full((bucket, KEY_WINDOW_ALIGN), padding_slot, dtype=torch.int64,
                                           device=self.device),
                kv_valid=valid,
            )
            # Two tensors, not one passed twice: dynamo guards on aliasing, and a graph built for aliased
            # inputs would be rebuilt at the first real step.
            input_ids, positions = (torch.zeros(bucket, dtype=torch.int64, device=self.device) for _ in range(2))
            self._run_decode(input_ids, positions, meta)

    def _verify_bucket(self, rows: int) -> int:
        """A compiled graph already built for up to 4x the rows beats compiling a new one (a minute on
        two cores): trees cut short near max_tokens would otherwise each compile their own size."""
        bucket = _bucket(rows)
        warm = [b for b in self._warm_buckets if bucket <= b <= 4 * bucket]
        return min(warm, default=bucket)

    def slot_of(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def copy_kv(self, src_slots: list[int], dst_slots: list[int]) -> None:
        """Copy every layer's keys and values from cache slots `src_slots` to `dst_slots`."""
        if not src_slots:
            return
        src = torch.tensor(src_slots, dtype=torch.int64, device=self.device)
        dst = torch.tensor(dst_slots, dtype=torch.int64, device=self.device)
        for layer in self.model.layers:
            for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
                flat = cache.view(-1, *cache.shape[2:])
                flat.index_copy_(0, dst, flat.index_select(0, src))

    def _decode_key_window(self, seqs: list[Sequence], padded_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cache slots of every key each decoding sequence attends to, padded to the longest."""
        window = aligned_window(max(len(seq) for seq in seqs))
        index = torch.full((padded_batch, window), PADDING_BLOCK * self.block_size, dtype=torch.int64)
        valid = torch.zeros((padded_batch, window), dtype=torch.bool)
        valid[len(seqs):, 0] = True
        offsets = torch.arange(self.block_size, dtype=torch.int64)
        for row, seq in enumerate(seqs):
            slots = (torch.tensor(seq.block_table, dtype=torch.int64)[:, None] * self.block_size + offsets)
            index[row, : len(seq)] = slots.flatten()[: len(seq)]
            valid[row, : len(seq)] = True
        index, valid = index.to(self.device), valid.to(self.device)
        return index, valid

    def _forward_logits(self, input_ids: torch.Tensor, positions: torch.Tensor,
                        meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of every row and, when the model collects them, the rows' auxiliary hidden states."""
        hidden, aux = self.model(input_ids, positions, meta)
        return self.model.compute_logits(hidden), (self._concat_aux(aux) if aux else None)

    def _run_decode(self, input_ids, positions, meta) -> tuple[torch.Tensor, torch.Tensor | None]:
        meta = _chunked_key_window(meta)
        if self._compile_failed:
            return self._forward_logits(input_ids, positions, meta)
        bucket = input_ids.shape[0]
        if bucket in self._warm_buckets:
            # Guards that only re-check the (unchanging) model's parameters cost ~1 ms a step; the ones
            # that tell batch buckets apart are still evaluated. A step that would need a new graph
            # raises instead, and goes on to the ordinary path below.
            try:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return self._decode_forward(input_ids, positions, meta)
            except RuntimeError:
                pass
        try:
            outputs = self._decode_forward(input_ids, positions, meta)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
            print(f"kilotok: torch.compile unavailable ({type(error).__name__}: {error}); running eager",
                  file=sys.stderr)
            self._compile_failed = True
            return self._forward_logits(input_ids, positions, meta)
        self._warm_buckets.add(bucket)
        return outputs

    def _prepare(self, seqs: list[Sequence], padded_batch: int, ends: list[int] | None = None):
        """Flat inputs for each sequence's tokens from num_cached_tokens to its end (`ends`, default the
        whole sequence), padded with one-token rows to `padded_batch` sequences."""
        ends = ends or [len(seq) for seq in seqs]
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc = [0]
        block_tables = torch.full((padded_batch, self.max_blocks_per_seq), PADDING_BLOCK, dtype=torch.int32)
        for row, (seq, end) in enumerate(zip(seqs, ends, strict=True)):
            start = seq.num_cached_tokens
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(self.slot_of(seq, p) for p in range(start, end))
            query_start_loc.append(query_start_loc[-1] + end - start)
            block_tables[row, : len(seq.block_table)] = torch.tensor(seq.block_table, dtype=torch.int32)
        context_lens = list(ends)
        for _ in range(padded_batch - len(seqs)):
            # Padding rows attend to one slot of the reserved block and write their K/V there.
            input_ids.append(0)
            positions.append(0)
            slots.append(PADDING_BLOCK * self.block_size)
            query_start_loc.append(query_start_loc[-1] + 1)
            context_lens.append(1)
        device = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            block_tables=block_tables.to(device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
        )
        last_rows = torch.tensor(query_start_loc[1 : len(seqs) + 1], device=device) - 1
        return (torch.tensor(input_ids, dtype=torch.int64, device=device),
                torch.tensor(positions, dtype=torch.int64, device=device), meta, last_rows)


def _chunked_key_window(meta: AttentionMetadata) -> AttentionMetadata:
    """The key window as [B, L / VALUE_CHUNK, VALUE_CHUNK] views with a dynamic chunk count, so one
    compiled graph per batch bucket serves every window length. Marking L itself dynamic fails: attention
    splits the window into fixed chunks, which constrains L to multiples of the chunk."""
    rows = meta.kv_gather_index.shape[0]
    index = meta.kv_gather_index.view(rows, -1, VALUE_CHUNK)
    valid = meta.kv_valid.view(rows, -1, VALUE_CHUNK)
    torch._dynamo.mark_dynamic(index, 1)
    torch._dynamo.mark_dynamic(valid, 1)
    return replace(meta, kv_gather_index=index, kv_valid=valid)
