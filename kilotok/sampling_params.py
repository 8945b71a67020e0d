"""Per-request sampling parameters, validated when a request arrives so the engine never sees bad values."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kilotok.errors import InvalidRequestError

# torch.Generator.manual_seed accepts exactly this range; rejecting outside it here gives a clear error
# at request time instead of an obscure one from torch mid-batch.
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1


def _is_int(value: object) -> bool:
    # bool is a subclass of int, but `top_k=True` is a client bug, not a request for top-1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _reject(field_name: str, value: object, allowed: str) -> InvalidRequestError:
    return InvalidRequestError(f"sampling parameter {field_name}={value!r} is invalid: {allowed}", param=field_name)


@dataclass
class SamplingParams:
    """How to pick tokens for one request and when to stop.

    temperature 0 means greedy decoding (the other sampling knobs are then ignored). top_k 0 or -1 and
    top_p 1 and min_p 0 switch those filters off. `stop` may be given as one string; it is stored as a
    list. Generation ends at max_tokens, a stop string, a stop token id, or EOS (unless ignore_eos).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 256
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    speculate: bool = True
    """Let the engine's speculative decoding draft for this request (output is the same either way)."""

    def __post_init__(self) -> None:
        self._check_sampling_knobs()
        self._check_limits()
        self.stop = self._normalised_stop(self.stop)
        self.stop_token_ids = self._normalised_stop_token_ids(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def top_k_enabled(self) -> bool:
        return self.top_k > 0

    def _check_sampling_knobs(self) -> None:
        t = self.temperature
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            raise _reject("temperature", t, "must be a finite number >= 0 (0 means greedy)")
        p = self.top_p
        if not _is_number(p) or not 0 < p <= 1:
            raise _reject("top_p", p, "must be a number with 0 < top_p <= 1 (1 disables it)")
        k = self.top_k
        if not _is_int(k) or k < -1:
            raise _reject("top_k", k, "must be an integer >= -1 (0 or -1 disables it)")
        m = self.min_p
        if not _is_number(m) or not 0 <= m <= 1:
            raise _reject("min_p", m, "must be a number with 0 <= min_p <= 1 (0 disables it)")

    def _check_limits(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise _reject("max_tokens", self.max_tokens, "must be an integer >= 1")
        if self.seed is not None and (not _is_int(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX):
            raise _reject("seed", self.seed, f"must be None or an integer in [{SEED_MIN}, {SEED_MAX}]")
        for flag in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, flag), bool):
                raise _reject(flag, getattr(self, flag), "must be true or false")

    @staticmethod
    def _normalised_stop(stop: object) -> list[str] | None:
        if stop is None:
            return None
        strings = [stop] if isinstance(stop, str) else stop
        if not isinstance(strings, list | tuple) or not all(isinstance(s, str) and s for s in strings):
            raise _reject("stop", stop, "must be a non-empty string or a list of non-empty strings")
        return list(strings)

    @staticmethod
    def _normalised_stop_token_ids(ids: object) -> list[int] | None:
        if ids is None:
            return None
        if not isinstance(ids, list | tuple) or not all(_is_int(i) and i >= 0 for i in ids):
            raise _reject("stop_token_ids", ids, "must be a list of integer token ids >= 0")
        return list(ids)
