"""`kilotok bench soak`: nothing is lost under load with cancellations.

Starts `kilotok serve` (or targets --url) and sends --num-requests streamed chat requests, --concurrency
at a time, of random lengths up to --max-tokens; half share a system prompt (so the prefix cache shares
blocks), and --cancel-fraction of them are cancelled by the client at a random point of their stream.
Then it checks that every request not cancelled completed, that the server counted every request under
one finish reason, and that its running and waiting requests and KV-cache use are back to 0. Exits 1
with the problems listed if anything was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kilotok.bench.client import (
    add_server_arguments,
    counter_deltas,
    fetch_metrics,
    make_client,
    metric_totals,
    metric_totals_by_label,
    open_chat_stream,
    run_closed_loop,
    running_server,
    served_model_id,
    shareable_settings,
)
from kilotok.bench.prompts import HELD_OUT_PROMPTS, Message, load_chat_prompts
from kilotok.bench.report import log, write_json
from kilotok.errors import InvalidRequestError
from kilotok.speculative.config import SPEC_METHODS

if TYPE_CHECKING:
    from openai import AsyncOpenAI

CLI_HELP = "send many requests, cancelling some mid-stream, and check that the server loses nothing"
IDLE_TIMEOUT_S = 60.0
SHARED_SYSTEM_PROMPT = (
    "You are a careful assistant. Answer in plain sentences, keep to the question, and say so when you "
    "are not sure. Prefer short paragraphs and concrete examples over long lists."
)
"""Given to half of the requests, so the prefix cache holds and shares blocks while requests come and go."""
MIN_MAX_TOKENS = 4

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
REQUEST_SUCCESS = "vllm:request_success"
PREEMPTIONS = "vllm:num_preemptions"
IDLE_GAUGES = (RUNNING, WAITING, KV_USAGE)


@dataclass(frozen=True)
class SoakSettings:
    model: str = "smollm2-135m"
    dtype: str = "auto"
    spec: str = "none"
    num_requests: int = 300
    concurrency: int = 16
    cancel_fraction: float = 0.3
    max_tokens: int = 64
    seed: int = 0
    url: str | None = None
    api_key: str | None = None
    server_args: str = ""
    server_timeout_s: float = 900.0
    prompts_file: Path = HELD_OUT_PROMPTS

    def __post_init__(self) -> None:
        if self.spec not in SPEC_METHODS:
            raise InvalidRequestError(f"--spec must be one of {', '.join(SPEC_METHODS)}, got {self.spec!r}")
        if self.num_requests < 1 or self.concurrency < 1:
            raise InvalidRequestError("--num-requests and --concurrency must be at least 1")
        if not 0.0 <= self.cancel_fraction <= 1.0:
            raise InvalidRequestError(f"--cancel-fraction must be between 0 and 1, got {self.cancel_fraction}")
        if self.max_tokens < MIN_MAX_TOKENS:
            raise InvalidRequestError(f"--max-tokens must be at least {MIN_MAX_TOKENS}, got {self.max_tokens}")


@dataclass(frozen=True)
class PlannedRequest:
    """One request, planned up front from the run's seeded generator so that a run can be repeated exactly."""

    messages: list[Message]
    max_tokens: int
    cancel_after_chunks: int | None
    """Close the stream once this many text chunks have arrived (0: right after the response starts);
    None: read to the end."""


@dataclass(frozen=True)
class RequestOutcome:
    planned: PlannedRequest
    cancelled: bool
    """The client closed the stream before its end."""
    finish_reason: str | None = None
    output_tokens: int | None = None
    error: str | None = None
    rejected: bool = False
    """The server refused the request up front with a 400 (e.g. it could never fit the KV cache)."""

    @property
    def completed(self) -> bool:
        return not self.cancelled and not self.rejected and self.error is None


@dataclass(frozen=True)
class ServerBooks:
    gauges: dict[str, float]
    finished: dict[str, float]
    """Requests the server finished, by finish reason (stop, length, abort, error)."""
    preemptions: float = 0.0


def plan_requests(conversations: list[list[Message]], count: int, max_tokens: int, cancel_fraction: float,
                  seed: int) -> list[PlannedRequest]:
    rng = random.Random(seed)
    planned = []
    for index in range(count):
        messages = conversations[index % len(conversations)]
        if rng.random() < 0.5:
            messages = [{"role": "system", "content": SHARED_SYSTEM_PROMPT}, *messages]
        tokens = rng.randint(MIN_MAX_TOKENS, max_tokens)
        cancel = rng.randint(0, tokens) if rng.random() < cancel_fraction else None
        planned.append(PlannedRequest(messages, tokens, cancel))
    return planned


async def run_request(client: AsyncOpenAI, model: str, request: PlannedRequest) -> RequestOutcome:
    import openai

    chunks = 0
    finish_reason = output_tokens = None
    try:
        stream = await open_chat_stream(client, model, request.messages, request.max_tokens)
        if request.cancel_after_chunks == 0:
            await stream.close()
            return RequestOutcome(request, cancelled=True)
        async for chunk in stream:
            if chunk.usage is not None:
                output_tokens = chunk.usage.completion_tokens
            if not chunk.choices:
                continue
            finish_reason = chunk.choices[0].finish_reason or finish_reason
            chunks += bool(chunk.choices[0].delta.content)
            if request.cancel_after_chunks is not None and chunks >= request.cancel_after_chunks:
                await stream.close()  # the server sees the connection drop
                return RequestOutcome(request, cancelled=True)
    except openai.BadRequestError as error:
        return RequestOutcome(request, cancelled=False, rejected=True, error=str(error))
    except openai.OpenAIError as error:
        return RequestOutcome(request, cancelled=False, error=f"{type(error).__name__}: {error}")
    if finish_reason not in ("stop", "length") or output_tokens is None:
        return RequestOutcome(request, False, finish_reason, output_tokens,
                              error=f"the stream ended with finish_reason={finish_reason!r} and "
                                    f"{'no usage' if output_tokens is None else 'usage'}")
    return RequestOutcome(request, False, finish_reason, output_tokens)


def books_from_metrics(exposition: str) -> ServerBooks:
    return ServerBooks(
        gauges=metric_totals(exposition, IDLE_GAUGES),
        finished=metric_totals_by_label(exposition, REQUEST_SUCCESS, "finished_reason"),
        preemptions=metric_totals(exposition, (PREEMPTIONS,)).get(PREEMPTIONS, 0.0),
    )


def wait_until_idle(base_url: str, api_key: str | None, timeout_s: float, poll_s: float = 0.5) -> ServerBooks:
    """The books once every idle gauge reads 0, or as they stand when `timeout_s` runs out.

    Idle means no request running or waiting and no KV block referenced (blocks the prefix cache keeps for
    reuse are free: the next request that needs room evicts them).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        books = books_from_metrics(fetch_metrics(base_url, api_key))
        if all(books.gauges.get(name, 0.0) == 0.0 for name in IDLE_GAUGES) or time.monotonic() > deadline:
            return books
        time.sleep(poll_s)


def find_problems(outcomes: list[RequestOutcome], before: ServerBooks, after: ServerBooks) -> list[str]:
    """Every way the run lost something, in words; empty when nothing was lost.

    The books balance when the server counted every request it was sent under exactly one finish reason,
    aborts for the ones the client walked away from (a cancellation that raced a request's natural end
    counts as that end). A request the server refused up front with a 400 (one that could never fit the KV
    cache) was never admitted: it is reported, not lost.
    """
    problems = [f"request {index} was not cancelled but did not complete: {outcome.error}"
                for index, outcome in enumerate(outcomes)
                if not outcome.cancelled and not outcome.rejected and outcome.error]
    missing = [name for name in IDLE_GAUGES if name not in after.gauges]
    if missing:
        problems.append(f"the server exports no {', '.join(missing)}")
    problems += [f"{name} is {after.gauges[name]:g} once the run is over, not 0"
                 for name in IDLE_GAUGES if after.gauges.get(name, 0.0) != 0.0]
    finished = counter_deltas(before.finished, after.finished)
    admitted = sum(not outcome.rejected for outcome in outcomes)
    if sum(finished.values()) != admitted:
        problems.append(f"the server finished {sum(finished.values()):g} requests, by reason {finished}, "
                        f"but admitted {admitted}")
    cancelled = sum(outcome.cancelled for outcome in outcomes)
    if finished.get("abort", 0.0) > cancelled:
        problems.append(f"the server aborted {finished['abort']:g} requests but only {cancelled} were cancelled")
    if finished.get("error", 0.0):
        problems.append(f"the server failed {finished['error']:g} requests with an error")
    return problems


def soak(settings: SoakSettings, base_url: str) -> dict:
    requests = plan_requests(load_chat_prompts(settings.prompts_file), settings.num_requests,
                             settings.max_tokens, settings.cancel_fraction, settings.seed)

    async def run() -> list[RequestOutcome]:
        client = make_client(base_url, settings.api_key)
        try:
            model = await served_model_id(client)
            return await run_closed_loop(requests, settings.concurrency,
                                         lambda request: run_request(client, model, request))
        finally:
            await client.close()

    before = books_from_metrics(fetch_metrics(base_url, settings.api_key))
    start_s = time.perf_counter()
    outcomes = asyncio.run(run())
    wall_s = time.perf_counter() - start_s
    after = wait_until_idle(base_url, settings.api_key, IDLE_TIMEOUT_S)
    return {
        "requests": len(outcomes),
        "cancelled": sum(outcome.cancelled for outcome in outcomes),
        "completed": sum(outcome.completed for outcome in outcomes),
        "rejected": [outcome.error for outcome in outcomes if outcome.rejected],
        "finish_reasons": dict(Counter(o.finish_reason for o in outcomes if o.completed)),
        "wall_s": round(wall_s, 1),
        "server_finished": counter_deltas(before.finished, after.finished),
        "server_preemptions": after.preemptions - before.preemptions,
        "server_gauges_after": after.gauges,
        "problems": find_problems(outcomes, before, after),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SoakSettings()
    add_server_arguments(parser, defaults)
    parser.add_argument("--num-requests", type=int, default=defaults.num_requests,
                        help="requests to send (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="requests in flight (default: %(default)s)")
    parser.add_argument("--cancel-fraction", type=float, default=defaults.cancel_fraction,
                        help="share of requests the client cancels mid-stream (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="largest max_tokens of a request; each draws its own (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the request plan")
    parser.add_argument("--out", type=Path, help="write the outcome as JSON to this file")


def run_from_args(args: argparse.Namespace) -> int:
    settings = SoakSettings(
        model=args.model, dtype=args.dtype, spec=args.spec, num_requests=args.num_requests,
        concurrency=args.concurrency, cancel_fraction=args.cancel_fraction, max_tokens=args.max_tokens,
        seed=args.seed, url=args.url, api_key=args.api_key, server_args=args.server_args,
        server_timeout_s=args.server_timeout, prompts_file=args.prompts_file,
    )
    if settings.url is not None:
        report = soak(settings, settings.url)
    else:
        with running_server(settings, settings.concurrency) as server:
            report = soak(settings, server.base_url)
    report["settings"] = shareable_settings(settings)
    print(json.dumps({key: value for key, value in report.items() if key != "settings"}, indent=2))
    if args.out is not None:
        write_json(args.out, report)
    for problem in report["problems"]:
        log(f"LOST: {problem}")
    return 1 if report["problems"] else 0
