"""The engine loop: requests come in as sequences; each step the scheduler picks the work, the decoder
runs it, and the scheduler's postprocess applies the results. The engine does not know how a step
decodes (plainly or speculatively): that is its decoder's business (runner/decoder.py)."""

from __future__ import annotations

from kilotok.engine.block_manager import BlockManager
from kilotok.engine.components import build_components
from kilotok.engine.engine_config import EngineConfig
from kilotok.engine.output import OutputProcessor, RequestOutput
from kilotok.engine.scheduler import Scheduler
from kilotok.errors import InvalidRequestError
from kilotok.layers.sampler import make_generator
from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence, SpecStats

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        parts = build_components(config)
        self.model_name = parts.model_name
        self.tokenizer = parts.tokenizer
        self.weight_format = parts.weight_format
        self.backend = parts.backend
        self.model_config = parts.model.config
        self.max_model_len = parts.max_model_len
        self.runner = parts.runner
        self.decoder = parts.decoder
        self.block_manager = BlockManager(parts.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   self.decoder.lookahead_slots, self.max_model_len, self.decoder.release)
        self.outputs = OutputProcessor(self.tokenizer, self.max_model_len)
        self.spec_stats = SpecStats()
        """Speculative decoding counters summed over every finished or aborted request."""

    def new_request(self, prompt_token_ids: list[int], params: SamplingParams) -> Sequence:
        """A validated request, ready for `submit`: raises InvalidRequestError for a prompt the engine
        cannot serve (empty, over the context window, outside the vocabulary) or a request that would
        outgrow the whole KV cache (it could never finish, even alone). Reads only fixed settings, so any
        thread may call it."""
        self._validate(prompt_token_ids, params)
        return Sequence(list(prompt_token_ids), params, generator=make_generator(params.seed, self.runner.device),
                        text=self.outputs.new_text_state())

    def submit(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams) -> Sequence:
        seq = self.new_request(prompt_token_ids, params)
        self.submit(seq)
        return seq

    def _validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty: give at least one token")
        if len(prompt_token_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {self.max_model_len} tokens, but the prompt has "
                f"{len(prompt_token_ids)} tokens, leaving no room for output: shorten the prompt.",
                code=CONTEXT_LENGTH_EXCEEDED)
        num_slots = min(len(prompt_token_ids) + params.max_tokens + self.scheduler.lookahead_slots,
                        self.max_model_len)
        capacity = self.block_manager.num_usable_blocks * self.block_manager.block_size
        if num_slots > capacity:
            raise InvalidRequestError(
                f"the request needs up to {num_slots} KV-cache slots ({len(prompt_token_ids)} prompt tokens, "
                f"max_tokens={params.max_tokens}) but the whole cache holds {capacity}: raise kv_cache_gb or "
                "kv_cache_blocks, lower max_tokens or shorten the prompt")
        vocab_size = self.model_config.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequestError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")

    def output_room(self, num_prompt_tokens: int) -> int:
        """The most tokens a request with this prompt can generate: up to the context window, or the whole
        KV cache if that is smaller."""
        cache_slots = (self.block_manager.num_usable_blocks * self.block_manager.block_size
                       - self.scheduler.lookahead_slots)
        return max(1, min(self.max_model_len, cache_slots) - num_prompt_tokens)

    def abort(self, seq: Sequence) -> None:
        """Stop a request now: its KV blocks are freed at once (cached prefix blocks stay reusable)."""
        if not seq.is_finished:
            self.scheduler.finish(seq, "abort")
            self.spec_stats.merge(seq.spec_stats)

    def warm_up(self, max_num_seqs: int | None = None) -> None:
        """Compile now every graph that steps of up to `max_num_seqs` decoding sequences (default: as many as
        the engine batches) run, plain or speculative, so that no request waits on the compiler later: on a
        small CPU each graph takes seconds the first time (inductor caches them on disk for later runs)."""
        if self.config.compile:
            self.decoder.warm_up(max_num_seqs or self.config.max_num_seqs, self.config.progress)

    def close(self) -> None:
        """End what the engine started beyond this process (the other ranks of a parallel run)."""
        self.runner.close()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[tuple[Sequence, RequestOutput]]:
        """Run one scheduled batch; returns an update for every sequence that gained tokens in it (a
        prompt still being prefilled in chunks has none yet)."""
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        results = self.decoder.step(batch)
        self.scheduler.postprocess(batch, results, self.outputs)
        updated = [seq for seq, result in zip(batch.seqs, results, strict=True) if result.tokens]
        for seq in updated:
            if seq.is_finished:
                self.spec_stats.merge(seq.spec_stats)
        return [(seq, self.outputs.output(seq)) for seq in updated]
