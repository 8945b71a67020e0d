"""transformers in eager mode and fp32 (no torch.compile, default dynamic cache) as a latency baseline.

For a GGUF this is the dequantized model: the same weights kilotok serves, upcast to fp32.
"""

from __future__ import annotations

import os
import time

from kilotok.bench.baselines import PromptMeasurement, measurement_from_token_times
from kilotok.bench.baselines.model_files import ModelFiles
from kilotok.errors import KilotokError


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
