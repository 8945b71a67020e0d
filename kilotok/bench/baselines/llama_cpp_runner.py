"""llama.cpp (through llama-cpp-python) on the same GGUF, as a latency baseline.

It runs the quantized blocks directly, so it reads the fewest bytes per token of any engine here: the bar
a CPU decode path has to clear.
"""

from __future__ import annotations

import time
from pathlib import Path

from kilotok.bench.baselines import PromptMeasurement, measurement_from_token_times
from kilotok.errors import KilotokError


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
