"""The engine loop: admit requests, schedule a step, run it, turn tokens into outputs."""

from __future__ import annotations

import time

import torch

from kilotok.engine.block_manager import BlockManager
from kilotok.engine.engine_config import EngineConfig
from kilotok.engine.model_runner import ModelRunner
from kilotok.engine.output_processor import OutputProcessor
from kilotok.engine.outputs import RequestOutput
from kilotok.engine.scheduler import ScheduledBatch, Scheduler
from kilotok.engine.sequence import Sequence
from kilotok.errors import InvalidRequestError
from kilotok.loader.registry import load_checkpoint
from kilotok.models.builder import build_model, resolve_weight_mode
from kilotok.sampling_params import SamplingParams
from kilotok.speculative.decoder import SpeculativeDecoder
from kilotok.speculative.factory import build_drafter
from kilotok.speculative.metrics import SpecStats


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        checkpoint = load_checkpoint(config.model, progress=config.progress)
        self.model_name = checkpoint.name
        self.tokenizer = checkpoint.tokenizer
        self.weight_mode = resolve_weight_mode(config.dtype, checkpoint)
        model = build_model(checkpoint, self.weight_mode, progress=config.progress)
        del checkpoint
        self.model_config = model.config
        self.max_model_len = min(config.max_model_len or model.config.max_position_embeddings,
                                 model.config.max_position_embeddings)
        num_blocks = config.kv_cache_blocks or max(
            2, int(config.kv_cache_gb * 2**30) // ModelRunner.kv_bytes_per_block(model, config.block_size))
        self.runner = ModelRunner(model, num_blocks, config.block_size, self.max_model_len, config.compile)
        self.drafter = build_drafter(config.spec, model, self.model_name)
        # Cached prompt blocks come without the target hidden states an EAGLE-3 drafter starts from.
        needs_prompt_features = self.drafter is not None and bool(self.drafter.aux_layer_ids)
        self.block_manager = BlockManager(num_blocks, config.block_size,
                                          config.enable_prefix_caching and not needs_prompt_features)
        self._prompt_aux: dict[int, list[torch.Tensor]] = {}
        """Aux hidden states of the chunks of prompts being prefilled, for drafter.start at the end."""
        self.speculator = None
        lookahead = 0
        if self.drafter is not None:
            self.runner.collect_aux_hidden(tuple(self.drafter.aux_layer_ids))
            self.speculator = SpeculativeDecoder(self.runner, self.drafter, config.spec.tree_policy(),
                                                 self.max_model_len)
            lookahead = config.spec.max_draft_nodes
        self.spec_stats = SpecStats()
        """Speculative decoding counters summed over every finished request."""
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   lookahead, self.max_model_len, mix_prefill_and_decode=self.speculator is None)
        self.outputs = OutputProcessor(self.tokenizer, self.max_model_len)

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams) -> Sequence:
        self.validate_prompt(prompt_token_ids, params)
        seq = Sequence(list(prompt_token_ids), params)
        self.outputs.start(seq)
        self.scheduler.add(seq)
        return seq

    def validate_prompt(self, prompt_token_ids: list[int], params: SamplingParams | None = None) -> None:
        """Raise InvalidRequestError for a prompt the engine cannot serve; with `params`, also for a
        request that would outgrow the whole KV cache (it could never finish, even alone)."""
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty: give at least one token")
        if len(prompt_token_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_token_ids)} tokens but the context window is {self.max_model_len}:"
                " shorten the prompt so there is room for at least one output token"
            )
        self._check_fits_cache(len(prompt_token_ids), params)
        vocab_size = self.model_config.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequestError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")

    def _check_fits_cache(self, num_prompt_tokens: int, params: SamplingParams | None) -> None:
        max_tokens = params.max_tokens if params is not None else 1
        num_slots = min(num_prompt_tokens + max_tokens + self.scheduler.lookahead_slots, self.max_model_len)
        capacity = self.block_manager.num_usable_blocks * self.block_manager.block_size
        if num_slots > capacity:
            raise InvalidRequestError(
                f"the request needs up to {num_slots} KV-cache slots ({num_prompt_tokens} prompt tokens, "
                f"max_tokens={max_tokens}) but the whole cache holds {capacity}: raise kv_cache_gb or "
                "kv_cache_blocks, lower max_tokens or shorten the prompt"
            )

    def abort(self, seq: Sequence) -> None:
        """Stop a request now: its KV blocks are freed at once (cached prefix blocks stay reusable)."""
        if not seq.is_finished:
            self.scheduler.finish(seq, "abort")
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        self.outputs.release(seq)
        self._prompt_aux.pop(seq.seq_id, None)
        if self.drafter is not None:
            self.drafter.release(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[tuple[Sequence, RequestOutput]]:
        """Run one scheduled batch; returns an update for every sequence that gained tokens in it (a
        prompt still being prefilled in chunks has none yet)."""
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        # Decoding rows and prompt chunks run as separate forwards: the decoding rows through the compiled
        # decode step (or a speculative step), where the prefill path would attend sequence by sequence.
        if batch.num_decodes and self.speculator is None:
            tokens = self.runner.run(batch.decode_seqs, is_prefill=False).tolist()
            self._append(batch.decode_seqs, [[token] for token in tokens])
        elif batch.num_decodes:
            self._speculative_step(batch.decode_seqs)
        if batch.has_prefill:
            self._prefill_step(batch.prefill_part())
        updated = batch.sampled_seqs
        updates = [(seq, self._output(seq)) for seq in updated]
        for seq in updated:
            if seq.is_finished:
                self._release(seq)
        return updates

    def _prefill_step(self, batch: ScheduledBatch) -> None:
        """Chunks of prompts, mixed with decoding sequences' next tokens when there is no speculation."""
        starts = [seq.num_cached_tokens for seq in batch.seqs]
        tokens, aux = self.runner.prefill(batch.seqs, batch.num_new_tokens)
        sampled = batch.sampled_seqs
        self._append(sampled, [[token] for token in tokens.tolist()])
        if self.drafter is None:
            return
        for row, (seq, start, sample) in enumerate(zip(batch.seqs, starts, batch.samples, strict=True)):
            chunks = self._prompt_aux.setdefault(seq.seq_id, [])
            if start == 0:
                chunks.clear()  # a recompute after preemption starts over
            if aux is not None:
                chunks.append(aux[row])
            if sample:
                self._prompt_aux.pop(seq.seq_id)
                if not seq.is_finished:
                    self.drafter.start(seq, torch.cat(chunks) if chunks else None)

    def _speculative_step(self, seqs: list[Sequence]) -> None:
        results = self.speculator.step(seqs)
        before = [seq.num_output_tokens for seq in seqs]
        self._append(seqs, [result.tokens for result in results])
        for seq, result, count in zip(seqs, results, before, strict=True):
            seq.spec_stats.record(result.drafted, result.max_depth, result.accepted, seq.num_output_tokens - count)
            if seq.is_finished:
                self.spec_stats.merge(seq.spec_stats)
            else:
                self.drafter.advance(seq, result.aux_hidden)

    def _append(self, seqs: list[Sequence], new_tokens: list[list[int]]) -> None:
        """Append each sequence's new tokens one at a time, so a stop rule cuts a speculative step short
        exactly where plain decoding would have stopped."""
        now = time.perf_counter()
        for seq, tokens in zip(seqs, new_tokens, strict=True):
            for token_id in tokens:
                reason = self.outputs.append(seq, token_id, now)
                if reason is not None:
                    self.scheduler.finish(seq, reason)
                    break

    def _output(self, seq: Sequence) -> RequestOutput:
        first = seq.first_token_time or seq.arrival_time
        last = seq.last_token_time or first
        decode_time = last - first
        decode_rate = (seq.num_output_tokens - 1) / decode_time if decode_time > 0 else 0.0
        return RequestOutput(
            request_id=seq.seq_id,
            prompt_token_ids=seq.prompt_token_ids,
            text=self.outputs.text_of(seq),
            token_ids=seq.output_token_ids,
            finish_reason=seq.finish_reason,
            ttft_s=first - seq.arrival_time,
            decode_tokens_per_s=decode_rate,
            e2e_s=last - seq.arrival_time,
            delta_text=self.outputs.take_delta(seq),
            acceptance_length=seq.spec_stats.acceptance_length,
            drafted_tokens=seq.spec_stats.drafted_tokens,
            accepted_tokens=seq.spec_stats.accepted_tokens,
            target_forwards=seq.spec_stats.target_forwards,
        )
