"""`kilotok bench serve`: per-user speed and total throughput of `kilotok serve` at several concurrencies.

Starts the server (or targets --url), then at each concurrency C warms up with C short requests and keeps
exactly C streamed, greedy chat requests in flight until --num-prompts have finished. Per level it reports
output tokens/s per user (median and p10), time to first token (median and p99), total output tokens/s,
and the acceptance length from the server's /metrics. --out writes the figures as JSON, --plot draws the
latency-throughput frontier; --append adds this configuration to an existing JSON, so runs with and
without speculation land on one chart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kilotok.bench.client import (
    MetricTotals,
    ServerUnavailableError,
    add_server_arguments,
    counter_deltas,
    fetch_metrics,
    make_client,
    metric_totals,
    open_chat_stream,
    run_closed_loop,
    running_server,
    served_model_id,
    shareable_settings,
)
from kilotok.bench.prompts import HELD_OUT_PROMPTS, Message, PromptCursor, cycled_bench_prompts, load_chat_prompts
from kilotok.bench.report import log, machine_info
from kilotok.bench.serve_results import (
    ConfigurationResult,
    LevelSummary,
    RequestTiming,
    format_table,
    merge_configuration,
    read_results,
    summarize_level,
    write_frontier_plot,
    write_results,
)
from kilotok.errors import InvalidRequestError
from kilotok.speculative.config import SPEC_METHODS

if TYPE_CHECKING:
    from openai import AsyncOpenAI

CLI_HELP = "measure tokens/s per user and total throughput of `kilotok serve` at several concurrencies"
DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32)
# Warm-up answers only need to pass through every batch size the level will run, not be long.
WARMUP_MAX_TOKENS = 16

# The counters a level reads from /metrics, named as vLLM names them.
NUM_DRAFTS = "vllm:spec_decode_num_drafts"
NUM_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens"
NUM_ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
PROMPT_TOKENS = "vllm:prompt_tokens"
BENCH_COUNTERS = (NUM_DRAFTS, NUM_DRAFT_TOKENS, NUM_ACCEPTED_TOKENS, GENERATION_TOKENS, PROMPT_TOKENS)


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


async def stream_chat(client: AsyncOpenAI, model: str, messages: list[Message], max_tokens: int) -> RequestTiming:
    """One greedy chat completion, streamed, timing the chunks that carry text as they arrive.

    The token count is the server's (`usage` in the last chunk), not a count of chunks: with speculative
    decoding one chunk can carry several tokens.
    """
    import openai

    sent_s = time.perf_counter()
    first_token_s = last_token_s = None
    output_tokens = None
    try:
        async for chunk in await open_chat_stream(client, model, messages, max_tokens):
            arrived_s = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                first_token_s = first_token_s if first_token_s is not None else arrived_s
                last_token_s = arrived_s
            if chunk.usage is not None:
                output_tokens = chunk.usage.completion_tokens
    except openai.OpenAIError as error:
        return RequestTiming(sent_s, time.perf_counter(), error=f"{type(error).__name__}: {error}")
    done_s = time.perf_counter()
    if output_tokens is None:
        return RequestTiming(sent_s, done_s, first_token_s, last_token_s,
                             error="the stream ended without usage (stream_options.include_usage ignored?)")
    return RequestTiming(sent_s, done_s, first_token_s, last_token_s, output_tokens)


async def time_closed_loop(
    client: AsyncOpenAI, model: str, conversations: list[list[Message]], concurrency: int, max_tokens: int
) -> tuple[list[RequestTiming], float]:
    """Every conversation streamed, `concurrency` at a time, and the wall time from first send to last answer."""
    start_s = time.perf_counter()
    timings = await run_closed_loop(conversations, concurrency,
                                    lambda messages: stream_chat(client, model, messages, max_tokens))
    return timings, time.perf_counter() - start_s


async def measure_level(
    client: AsyncOpenAI, model_id: str, settings: ServeBenchSettings, concurrency: int,
    measured: list[list[Message]], base_url: str,
) -> LevelSummary:
    log(f"concurrency {concurrency}: {'warm-up, then ' if settings.warmup else ''}{len(measured)} requests")
    if settings.warmup:
        # The fixed bench prompts, not the measured ones, so the measured prefills find nothing cached.
        await time_closed_loop(client, model_id, cycled_bench_prompts(concurrency), concurrency,
                               min(settings.max_tokens, WARMUP_MAX_TOKENS))
    before = await asyncio.to_thread(fetch_counters, base_url, settings.api_key)
    timings, wall_s = await time_closed_loop(client, model_id, measured, concurrency, settings.max_tokens)
    after = await asyncio.to_thread(fetch_counters, base_url, settings.api_key)
    level = summarize_level(concurrency, timings, wall_s, _level_acceptance(settings.spec, before, after))
    _log_level(level, timings)
    if level.num_failed == level.num_requests:
        first_error = next(timing.error for timing in timings if timing.error)
        raise ServerUnavailableError(f"every request at concurrency {concurrency} failed; the first: {first_error}")
    return level


async def measure_levels(
    settings: ServeBenchSettings, base_url: str, conversations: list[list[Message]]
) -> list[LevelSummary]:
    cursor = PromptCursor(conversations)
    client = make_client(base_url, settings.api_key)
    try:
        model_id = await served_model_id(client)
        levels = [
            await measure_level(client, model_id, settings, concurrency,
                                cursor.take(settings.requests_at(concurrency)), base_url)
            for concurrency in settings.concurrency
        ]
    finally:
        await client.close()
    if cursor.wrapped:
        log(f"note: the levels used more prompts than {settings.prompts_file} holds, so some repeated")
    return levels


def fetch_counters(base_url: str, api_key: str | None = None) -> MetricTotals | None:
    """The server's bench counters now, or None when it serves no /metrics or cannot be reached (a server
    that died fails the level's requests too, and that failure is the one reported)."""
    try:
        return metric_totals(fetch_metrics(base_url, api_key), BENCH_COUNTERS)
    except OSError:
        return None


def acceptance_length(deltas: MetricTotals) -> float | None:
    """Tokens emitted per target decode forward, by vLLM's definition: 1 + accepted tokens / drafts.

    1.0 when no draft was made (speculation off, or scaled back to nothing at this batch size); None when
    the server exports no speculative counters at all, so "unknown" is never reported as "no gain".
    """
    if NUM_DRAFTS not in deltas:
        return None
    drafts = deltas[NUM_DRAFTS]
    if drafts <= 0:
        return 1.0
    return 1.0 + deltas.get(NUM_ACCEPTED_TOKENS, 0.0) / drafts


def _level_acceptance(spec: str, before: MetricTotals | None, after: MetricTotals | None) -> float | None:
    """Measured from the counters whatever --spec says (a --url server speculates as it was started to);
    a server exporting no speculative counters while --spec is none makes one token per forward."""
    measured = None if before is None or after is None else acceptance_length(counter_deltas(before, after))
    return 1.0 if measured is None and spec == "none" else measured


def _log_level(level: LevelSummary, timings: list[RequestTiming]) -> None:
    rate = level.median_tokens_per_s_per_user
    log(f"  concurrency {level.concurrency}: {level.num_requests} requests in {level.wall_s:.1f} s, "
        f"{level.total_output_tokens_per_s:.1f} tok/s total, "
        f"{'-' if rate is None else f'{rate:.1f}'} tok/s per user (median)")
    errors = [timing.error for timing in timings if timing.error is not None]
    if errors:
        log(f"  {len(errors)} request(s) failed; the first: {errors[0]}")


def run_serve_bench(settings: ServeBenchSettings, conversations: list[list[Message]]) -> ConfigurationResult:
    # Taken first, so the load average is other processes', not this run's own server loading.
    machine = machine_info()
    config = shareable_settings(settings)
    command_line = [Path(sys.argv[0]).name, *sys.argv[1:]]
    if settings.url is not None:
        log(f"benchmarking the server at {settings.url}")
        levels = asyncio.run(measure_levels(settings, settings.url, conversations))
        return ConfigurationResult(settings.display_label, command_line, machine, config, levels)
    with running_server(settings, max(settings.concurrency)) as server:
        config["server_command"] = server.command
        try:
            levels = asyncio.run(measure_levels(settings, server.base_url, conversations))
        except ServerUnavailableError as error:
            raise ServerUnavailableError(f"{error}\nlast lines of the server's output:\n{server.log_tail()}") from None
        if any(level.num_failed for level in levels):
            log(f"last lines of the server's output:\n{server.log_tail()}")
    return ConfigurationResult(settings.display_label, command_line, machine, config, levels)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServeBenchSettings()
    add_server_arguments(parser, defaults)
    parser.add_argument("--concurrency", default=",".join(map(str, defaults.concurrency)),
                        help="comma-separated requests in flight per level (default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=None,
                        help="requests measured per level (default: max(2 x concurrency, 8))")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="max_tokens of every request, greedy, EOS honoured (default: %(default)s)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the short warm-up before each level")
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--plot", type=Path, help="draw the frontier of every configuration in the results")
    parser.add_argument("--label", default=None, help="this configuration's name in the JSON and the plot")
    parser.add_argument("--append", action="store_true",
                        help="add this configuration to the existing --out file instead of overwriting it")


def run_from_args(args: argparse.Namespace) -> int:
    if args.append and args.out is None:
        raise InvalidRequestError("--append needs --out: the JSON file to add this configuration to")
    settings = ServeBenchSettings(
        model=args.model, dtype=args.dtype, spec=args.spec, concurrency=parse_concurrency(args.concurrency),
        num_prompts=args.num_prompts, max_tokens=args.max_tokens, url=args.url, api_key=args.api_key,
        label=args.label, warmup=not args.no_warmup, server_timeout_s=args.server_timeout,
        server_args=args.server_args, prompts_file=args.prompts_file,
    )
    # Checked before the server starts, so a bad file costs no model loading.
    existing = read_results(args.out) if args.append and args.out.exists() else []
    conversations = load_chat_prompts(settings.prompts_file)
    result = run_serve_bench(settings, conversations)
    print(format_table(result))
    configurations = merge_configuration(existing, result)
    if args.out is not None:
        write_results(args.out, configurations)
        log(f"wrote {args.out}")
    if args.plot is not None:
        write_frontier_plot(args.plot, configurations)
        log(f"wrote {args.plot}")
    return 1 if any(level.num_failed for level in result.levels) else 0
