"""Run `kilotok bench serve`: start or reach the server, then measure each concurrency level in turn."""

from __future__ import annotations

import asyncio
import itertools
import sys
from dataclasses import asdict
from pathlib import Path

from openai import AsyncOpenAI

from kilotok.bench.machine import machine_info
from kilotok.bench.prompts import Message, bench_prompts
from kilotok.bench.serve_client import ServerUnavailableError, make_client, run_closed_loop, served_model_id
from kilotok.bench.serve_metrics import CounterSnapshot, acceptance_length, counter_deltas, fetch_counters
from kilotok.bench.serve_prompts import PromptCursor
from kilotok.bench.serve_report import ConfigurationResult
from kilotok.bench.serve_server import ServerProcess, free_port, serve_command
from kilotok.bench.serve_settings import ServeBenchSettings
from kilotok.bench.serve_stats import LevelSummary, RequestTiming, summarize_level

# Warm-up answers only need to pass through every batch size the level will run, not be long.
WARMUP_MAX_TOKENS = 16


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _warmup_conversations(count: int) -> list[list[Message]]:
    # The fixed latency prompts, not the measured ones, so the measured prefills find nothing cached.
    return list(itertools.islice(itertools.cycle(bench_prompts()), count))


async def measure_level(
    client: AsyncOpenAI, model_id: str, settings: ServeBenchSettings, concurrency: int,
    measured: list[list[Message]], base_url: str,
) -> LevelSummary:
    _log(f"concurrency {concurrency}: {'warm-up, then ' if settings.warmup else ''}{len(measured)} requests")
    if settings.warmup:
        await run_closed_loop(client, model_id, _warmup_conversations(concurrency), concurrency,
                              min(settings.max_tokens, WARMUP_MAX_TOKENS))
    before = await asyncio.to_thread(fetch_counters, base_url, settings.api_key)
    timings, wall_s = await run_closed_loop(client, model_id, measured, concurrency, settings.max_tokens)
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
        _log(f"note: the levels used more prompts than {settings.prompts_file} holds, so some repeated")
    return levels


def _level_acceptance(spec: str, before: CounterSnapshot | None, after: CounterSnapshot | None) -> float | None:
    """Measured from the counters whatever --spec says (a --url server speculates as it was started to);
    a server exporting no speculative counters while --spec is none makes one token per forward."""
    measured = None if before is None or after is None else acceptance_length(counter_deltas(before, after))
    return 1.0 if measured is None and spec == "none" else measured


def _log_level(level: LevelSummary, timings: list[RequestTiming]) -> None:
    rate = level.median_tokens_per_s_per_user
    _log(f"  concurrency {level.concurrency}: {level.num_requests} requests in {level.wall_s:.1f} s, "
         f"{level.total_output_tokens_per_s:.1f} tok/s total, "
         f"{'-' if rate is None else f'{rate:.1f}'} tok/s per user (median)")
    errors = [timing.error for timing in timings if timing.error is not None]
    if errors:
        _log(f"  {len(errors)} request(s) failed; the first: {errors[0]}")


def run_serve_bench(settings: ServeBenchSettings, conversations: list[list[Message]]) -> ConfigurationResult:
    # Taken first, so the load average is other processes', not this run's own server loading.
    machine = machine_info()
    # The API key stays out of the file: results get shared, keys must not.
    config = {**asdict(settings), "prompts_file": str(settings.prompts_file), "api_key": None}
    command_line = [Path(sys.argv[0]).name, *sys.argv[1:]]
    if settings.url is not None:
        _log(f"benchmarking the server at {settings.url}")
        levels = asyncio.run(measure_levels(settings, settings.url, conversations))
        return ConfigurationResult(settings.display_label, command_line, machine, config, levels)
    port = free_port()
    command = serve_command(settings.model, settings.dtype, settings.spec, port, max(settings.concurrency),
                            settings.server_args)
    config["server_command"] = command
    with ServerProcess(command, f"http://127.0.0.1:{port}") as server:
        _log(f"starting the server: {' '.join(command)}")
        server.wait_until_healthy(settings.server_timeout_s)
        try:
            levels = asyncio.run(measure_levels(settings, server.base_url, conversations))
        except ServerUnavailableError as error:
            raise ServerUnavailableError(f"{error}\nlast lines of the server's output:\n{server.log_tail()}") from None
        if any(level.num_failed for level in levels):
            _log(f"last lines of the server's output:\n{server.log_tail()}")
    return ConfigurationResult(settings.display_label, command_line, machine, config, levels)
