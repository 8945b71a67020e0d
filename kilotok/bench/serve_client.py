"""The load generator of `kilotok bench serve`: streamed chat requests through the official `openai` client,
in a closed loop that keeps a fixed number of requests in flight.

A closed loop (a new request starts the moment one finishes) holds the server at exactly the concurrency
being measured, which an open loop with a request rate cannot promise on a machine this slow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import openai
from openai import AsyncOpenAI

from kilotok.bench.prompts import Message
from kilotok.bench.serve_stats import RequestTiming
from kilotok.errors import KilotokError

# Requests stream for minutes at high concurrency on two CPU cores; a benchmark waits rather than retries.
REQUEST_TIMEOUT_S = 3600.0
PLACEHOLDER_API_KEY = "kilotok-bench"


class ServerUnavailableError(KilotokError):
    """The benchmarked server cannot be reached, or rejects every request the benchmark sends."""


def make_client(base_url: str, api_key: str | None) -> AsyncOpenAI:
    # No retries: a silently retried request would count its failed attempt's time as the answer's.
    return AsyncOpenAI(
        base_url=f"{base_url.rstrip('/')}/v1", api_key=api_key or PLACEHOLDER_API_KEY,
        max_retries=0, timeout=REQUEST_TIMEOUT_S,
    )


async def served_model_id(client: AsyncOpenAI) -> str:
    """The id the server lists first under /v1/models: requests must name the model as the server does."""
    try:
        page = await client.models.list()
    except openai.OpenAIError as error:
        raise ServerUnavailableError(
            f"cannot list the models of the server at {client.base_url}: {type(error).__name__}: {error}"
        ) from None
    if not page.data:
        raise ServerUnavailableError(f"the server at {client.base_url} lists no model under /models")
    return page.data[0].id


async def stream_chat(client: AsyncOpenAI, model: str, messages: list[Message], max_tokens: int) -> RequestTiming:
    """One greedy chat completion, streamed, timing the chunks that carry text as they arrive.

    The token count is the server's (`usage` in the last chunk), not a count of chunks: with speculative
    decoding one chunk can carry several tokens.
    """
    sent_s = time.perf_counter()
    first_token_s = last_token_s = None
    output_tokens = None
    try:
        stream = await client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True},
            temperature=0.0, max_tokens=max_tokens,
        )
        async for chunk in stream:
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


async def run_closed_loop(
    client: AsyncOpenAI, model: str, conversations: list[list[Message]], concurrency: int, max_tokens: int
) -> tuple[list[RequestTiming], float]:
    """Send every conversation with `concurrency` requests in flight until all have finished.

    Returns the timings in completion order and the wall time from the first send to the last answer.
    """
    pending: Iterator[list[Message]] = iter(conversations)
    timings: list[RequestTiming] = []

    async def user() -> None:
        # Each simulated user sends its next request as soon as its previous answer has finished.
        for messages in pending:
            timings.append(await stream_chat(client, model, messages, max_tokens))

    start_s = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(min(concurrency, len(conversations)))))
    return timings, time.perf_counter() - start_s
