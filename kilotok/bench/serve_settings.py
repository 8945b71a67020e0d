"""What one `kilotok bench serve` run measures: the server it starts or targets and the load it applies."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from kilotok.bench.serve_prompts import HELD_OUT_PROMPTS
from kilotok.errors import InvalidRequestError

SPEC_METHODS = ("none", "eagle3", "ngram")
DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32)


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InvalidRequestError(f"--concurrency must be comma-separated integers like 1,2,4, got {text!r}") from None
    if any(level < 1 for level in levels) or len(set(levels)) != len(levels):
        raise InvalidRequestError(f"--concurrency levels must be distinct and at least 1, got {text!r}")
    return levels


@dataclass(frozen=True)
class ServeBenchSettings:
    model: str = "smollm2-135m"
    dtype: str = "auto"
    spec: str = "none"
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    # Requests measured per level; None: max(2 * concurrency, 8).
    num_prompts: int | None = None
    max_tokens: int = 128
    url: str | None = None
    api_key: str | None = None
    label: str | None = None
    warmup: bool = True
    server_timeout_s: float = 900.0
    server_args: str = ""
    prompts_file: Path = HELD_OUT_PROMPTS

    def __post_init__(self) -> None:
        if self.spec not in SPEC_METHODS:
            raise InvalidRequestError(f"--spec must be one of {', '.join(SPEC_METHODS)}, got {self.spec!r}")
        if self.max_tokens < 2:
            raise InvalidRequestError(f"--max-tokens must be at least 2 to time streaming, got {self.max_tokens}")
        if not self.concurrency:
            raise InvalidRequestError("--concurrency needs at least one level")
        if self.num_prompts is not None and self.num_prompts < max(self.concurrency):
            raise InvalidRequestError(
                f"--num-prompts ({self.num_prompts}) must be at least the largest concurrency "
                f"({max(self.concurrency)}), or that level never has all its requests in flight"
            )

    def requests_at(self, concurrency: int) -> int:
        return self.num_prompts if self.num_prompts is not None else max(2 * concurrency, 8)

    @property
    def display_label(self) -> str:
        return self.label or f"{self.model} ({self.dtype}, spec {self.spec})"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that pick the server a bench loads (or reaches) and the prompts it sends."""
    defaults = ServeBenchSettings()
    parser.add_argument("--model", default=defaults.model, help="model the server loads (default: %(default)s)")
    parser.add_argument("--dtype", default=defaults.dtype, help="the server's weight format (default: auto)")
    parser.add_argument("--spec", choices=SPEC_METHODS, default=defaults.spec,
                        help="speculative decoding method of the server (default: none)")
    parser.add_argument("--url", default=None,
                        help="use the server already running here (e.g. http://127.0.0.1:8000) instead of "
                             "starting one")
    parser.add_argument("--api-key", default=None, help="API key of the --url server, if it wants one")
    parser.add_argument("--prompts-file", type=Path, default=defaults.prompts_file,
                        help="JSONL (optionally .gz) of {\"prompt\"} or {\"messages\"} lines "
                             "(default: the held-out split of data/smollm2-135m-distill)")
    parser.add_argument("--server-timeout", type=float, default=defaults.server_timeout_s,
                        help="seconds to wait for the started server's /health (default: %(default)s)")
    parser.add_argument("--server-args", default="",
                        help="extra flags for the started `kilotok serve`, as one string with an equals sign: "
                             "--server-args='--no-compile --kv-cache-gb 2'")
