"""The Python API: `LLM(model).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace

from tqdm import tqdm

from kilotok.engine.engine_config import EngineConfig
from kilotok.engine.llm_engine import LLMEngine
from kilotok.engine.output import RequestOutput
from kilotok.errors import InvalidRequestError
from kilotok.sampling_params import SamplingParams

Prompt = str | list[dict] | dict
"""A plain string, a chat as a list of {"role", "content"} messages, or {"prompt_token_ids": [...]}."""


class LLM:
    """An engine for one model. Extra keyword arguments are `EngineConfig` fields (device, dtype, compile,
    gpu_memory_utilization, cuda_graphs, ...), among them `spec`: "ngram", "eagle3" or a
    `kilotok.speculative.config.SpecConfig` for lossless speculative decoding."""

    def __init__(self, model: str = "smollm2-135m", **engine_settings) -> None:
        self.engine = LLMEngine(replace(EngineConfig(), model=model, **engine_settings))
        self.tokenizer = self.engine.tokenizer
        if self.engine.config.compile:
            self._warm_up()

    def _warm_up(self) -> None:
        """Compile the single-sequence steps now, so the first request's timings measure decoding, not the
        compiler. A server compiles every batch size's (`LLMEngine.warm_up`)."""
        if self.engine.config.progress:
            print("kilotok: preparing the compiled decode step (cached after the first run)", file=sys.stderr)
        self.engine.warm_up(1)

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" not in prompt:
                raise InvalidRequestError("a dict prompt must hold 'prompt_token_ids'")
            return list(prompt["prompt_token_ids"])
        if isinstance(prompt, list):
            return self.tokenizer.encode_chat(prompt)
        raise InvalidRequestError(
            f"a prompt must be a string, a list of chat messages or a dict, not {type(prompt).__name__}"
        )

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Run every prompt to completion (batched together) and return outputs in prompt order."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(params, len(prompt_list))
        # Every request is built (and checked) before any is queued, so one bad prompt leaves nothing
        # half-submitted.
        seqs = [self.engine.new_request(self.encode(p), sp) for p, sp in zip(prompt_list, params_list, strict=True)]
        for seq in seqs:
            self.engine.submit(seq)
        final: dict[int, RequestOutput] = {}
        with tqdm(total=len(seqs), desc="generating", disable=not use_tqdm) as bar:
            while self.engine.has_unfinished():
                for seq, output in self.engine.step():
                    if output.finished:
                        final[seq.seq_id] = output
                        bar.update(1)
        return [final[seq.seq_id] for seq in seqs]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield an update after every step of one request; `delta_text` holds the new text."""
        seq = self.engine.add_request(self.encode(prompt), params or SamplingParams())
        try:
            while not seq.is_finished:
                for updated, output in self.engine.step():
                    if updated is seq:
                        yield output
        finally:
            self.engine.abort(seq)

    def close(self) -> None:
        """End the other ranks of a parallel run (also done at exit); a no-op for one process."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _as_prompt_list(prompts) -> list[Prompt]:
    if isinstance(prompts, str | dict):
        return [prompts]
    if isinstance(prompts, list) and prompts and isinstance(prompts[0], dict) and "role" in prompts[0]:
        return [prompts]
    return list(prompts)


def _as_params_list(params, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    if len(params) != count:
        raise InvalidRequestError(f"got {len(params)} SamplingParams for {count} prompts")
    return list(params)
