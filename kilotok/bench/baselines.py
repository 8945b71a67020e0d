"""Reference engines that `kilotok bench latency --compare` times against kilotok on the same prompt ids.

- transformers in eager mode and fp32 (no torch.compile, default dynamic cache): for a GGUF this is the
  dequantized model, the same weights kilotok serves, upcast to fp32.
- llama.cpp (through llama-cpp-python) on the same GGUF. It runs the quantized blocks directly, so it reads
  the fewest bytes per token of any engine here: the bar a CPU decode path has to clear.

Each engine's package is imported only when a comparison asks for it, so that kilotok itself never imports
transformers or llama_cpp. Every runner returns the same `PromptMeasurement`, timed the way kilotok's
`RequestOutput` is: TTFT from the call to the first token, decode rate over the tokens after the first.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kilotok.bench.report import log
from kilotok.errors import KilotokError
from kilotok.loader.registry import resolve_model


@dataclass(frozen=True)
class PromptMeasurement:
    """One prompt run at batch 1 by one engine."""

    num_prompt_tokens: int
    ttft_s: float
    decode_tokens_per_s: float
    token_ids: list[int] = field(repr=False)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.num_prompt_tokens / self.ttft_s


class EngineRunner(Protocol):
    """What the latency bench needs from an engine: a label and one timed greedy run per prompt."""

    name: str
    version: str
    # The model's end-of-sequence ids as this engine knows them (may be empty).
    stop_token_ids: frozenset[int]

    def measure(self, prompt_token_ids: list[int], max_tokens: int) -> PromptMeasurement: ...


def measurement_from_token_times(
    prompt_token_ids: list[int], start_s: float, token_times_s: list[float], token_ids: list[int]
) -> PromptMeasurement:
    """Turns per-token arrival times into TTFT and decode rate; the decode rate excludes the first token
    because its time is the prefill's."""
    if len(token_times_s) < 2:
        raise ValueError("a decode rate needs at least two generated tokens")
    decode_s = token_times_s[-1] - token_times_s[0]
    return PromptMeasurement(
        num_prompt_tokens=len(prompt_token_ids),
        ttft_s=token_times_s[0] - start_s,
        decode_tokens_per_s=(len(token_times_s) - 1) / decode_s,
        token_ids=list(token_ids),
    )


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are, as the reference engines load them: transformers wants a folder plus the
    GGUF's file name; llama.cpp wants the GGUF path and cannot read a Hugging Face folder at all."""

    folder: Path
    gguf_file: str | None

    @property
    def gguf_path(self) -> Path | None:
        return None if self.gguf_file is None else self.folder / self.gguf_file


def resolve_model_files(model: str) -> ModelFiles:
    """A GGUF path, a Hugging Face folder or a model alias, resolved exactly as kilotok resolves it (so every
    engine loads the same weights), as a folder and optional GGUF file name."""
    path = resolve_model(model)
    return ModelFiles(path, None) if path.is_dir() else ModelFiles(path.parent, path.name)


class _TokenClock:
    """A generate() streamer that timestamps each new token; generate first hands it the prompt."""

    def __init__(self) -> None:
        self.token_times_s: list[float] = []
        self._prompt_seen = False

    def put(self, value: object) -> None:
        if self._prompt_seen:
            self.token_times_s.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


class TransformersRunner:
    """Greedy, fixed-length generation with AutoModelForCausalLM at batch 1."""

    name = "transformers eager fp32"

    def __init__(self, files: ModelFiles) -> None:
        # Loading a GGUF must never reach for the hub: the weights are all on disk.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            import transformers
        except ImportError as error:
            raise KilotokError(
                f"the transformers baseline needs transformers and accelerate ({error}): "
                "pip install -e .[test]"
            ) from error
        self._torch = torch
        self.version = transformers.__version__
        load_options = {} if files.gguf_file is None else {"gguf_file": files.gguf_file}
        self._model = transformers.AutoModelForCausalLM.from_pretrained(
            files.folder, dtype=torch.float32, **load_options
        ).eval()
        eos = self._model.generation_config.eos_token_id
        self.stop_token_ids: frozenset[int] = frozenset(
            [] if eos is None else [eos] if isinstance(eos, int) else eos
        )

    def measure(self, prompt_token_ids: list[int], max_tokens: int) -> PromptMeasurement:
        """min_new_tokens = max_new_tokens masks EOS, so every run decodes exactly max_tokens tokens."""
        input_ids = self._torch.tensor([prompt_token_ids], dtype=self._torch.long)
        clock = _TokenClock()
        with self._torch.inference_mode():
            start_s = time.perf_counter()
            output = self._model.generate(
                input_ids,
                attention_mask=self._torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                streamer=clock,
            )
        new_token_ids = output[0, len(prompt_token_ids):].tolist()
        return measurement_from_token_times(prompt_token_ids, start_s, clock.token_times_s, new_token_ids)


class LlamaCppRunner:
    """Greedy generation from token ids, with a cleared KV cache before each prompt."""

    name = "llama.cpp"

    def __init__(self, gguf_path: Path, context_tokens: int, threads: int) -> None:
        try:
            import llama_cpp
        except ImportError as error:
            raise KilotokError(
                f"the llama.cpp baseline needs llama-cpp-python ({error}): bash scripts/build-llama-cpp.sh"
            ) from error
        self.version = llama_cpp.__version__
        self._llama = llama_cpp.Llama(
            model_path=str(gguf_path),
            n_ctx=context_tokens,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.stop_token_ids = frozenset({self._llama.token_eos()})

    def measure(self, prompt_token_ids: list[int], max_tokens: int) -> PromptMeasurement:
        """The generator never stops on EOS by itself, which is the fixed-length run the bench wants."""
        # Without the reset, generate() would reuse the cached prefix of the previous run of this prompt.
        self._llama.reset()
        token_ids: list[int] = []
        token_times_s: list[float] = []
        start_s = time.perf_counter()
        for token_id in self._llama.generate(
            prompt_token_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True
        ):
            token_times_s.append(time.perf_counter())
            token_ids.append(token_id)
            if len(token_ids) == max_tokens:
                break
        return measurement_from_token_times(prompt_token_ids, start_s, token_times_s, token_ids)


def baseline_factories(model: str, context_tokens: int) -> list[Callable[[], EngineRunner]]:
    """The baselines that can run `model`, to load one after another (each is freed before the next loads)."""
    files = resolve_model_files(model)
    factories: list[Callable[[], EngineRunner]] = [lambda: TransformersRunner(files)]
    if files.gguf_path is None:
        log("llama.cpp skipped: it needs a GGUF file, and this model is a Hugging Face folder")
    elif importlib.util.find_spec("llama_cpp") is None:
        log("llama.cpp skipped: llama_cpp is not installed (bash scripts/build-llama-cpp.sh)")
    else:
        threads = len(os.sched_getaffinity(0))
        factories.append(lambda: LlamaCppRunner(files.gguf_path, context_tokens, threads))
    return factories
