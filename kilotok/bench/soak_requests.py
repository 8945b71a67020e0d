"""The load of `kilotok bench soak`: streamed chat requests of mixed lengths, some cancelled mid-stream.

Each request is planned up front from one seeded random generator (its max_tokens, whether it shares a
system prompt with others, and after how many text chunks the client walks away, if it does), so a run
can be repeated exactly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass

import openai
from openai import AsyncOpenAI

from kilotok.bench.prompts import Message

SHARED_SYSTEM_PROMPT = (
    "You are a careful assistant. Answer in plain sentences, keep to the question, and say so when you "
    "are not sure. Prefer short paragraphs and concrete examples over long lists."
)
"""Given to half of the requests, so the prefix cache holds and shares blocks while requests come and go."""
MIN_MAX_TOKENS = 4


@dataclass(frozen=True)
class PlannedRequest:
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
    chunks = 0
    finish_reason = output_tokens = None
    try:
        stream = await client.chat.completions.create(
            model=model, messages=request.messages, stream=True, stream_options={"include_usage": True},
            temperature=0.0, max_tokens=request.max_tokens,
        )
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


async def run_requests(client: AsyncOpenAI, model: str, requests: list[PlannedRequest],
                       concurrency: int) -> list[RequestOutcome]:
    """Every request, `concurrency` at a time (a new one starts when one ends), outcomes in plan order."""
    pending: Iterator[tuple[int, PlannedRequest]] = iter(enumerate(requests))
    outcomes: list[RequestOutcome | None] = [None] * len(requests)

    async def user() -> None:
        for index, request in pending:
            outcomes[index] = await run_request(client, model, request)

    await asyncio.gather(*(user() for _ in range(min(concurrency, len(requests)))))
    return [outcome for outcome in outcomes if outcome is not None]
