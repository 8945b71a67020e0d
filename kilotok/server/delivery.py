"""Hands a request group's outputs to the HTTP client: whole (one JSON body) or as server-sent events
ending with `data: [DONE]`. Either way, a client that disconnects cancels its sequences at once, so their
KV blocks go back to the pool instead of decoding for nobody."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import Request, Response
from pydantic import BaseModel

from kilotok.engine.outputs import RequestOutput
from kilotok.server.errors import APIError
from kilotok.server.request_group import RequestGroup
from kilotok.server.responses import Usage

DONE = "data: [DONE]\n\n"
CLIENT_CLOSED_REQUEST = 499
"""The status nginx logs for a client that hung up before the response."""


def sse(payload: BaseModel | dict) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


@asynccontextmanager
async def cancel_on_disconnect(request: Request, group: RequestGroup) -> AsyncIterator[None]:
    """Watch the connection while the body is produced; uvicorn reports a closed socket as
    `http.disconnect` on `receive` (the request body has been read by then)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                group.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


async def collect(request: Request, submit: Callable[[], RequestGroup], count: int) -> list[RequestOutput] | None:
    """Every sequence's final output in index order, or None when the client went away first."""
    final: list[RequestOutput | None] = [None] * count
    group = submit()
    async with group, cancel_on_disconnect(request, group):
        async for index, output in group:
            if output.finished:
                final[index] = output
    return None if any(output is None for output in final) else final


def client_gone() -> Response:
    """What a handler returns when its client disconnected before the answer was ready; nobody reads it."""
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def usage_of(outputs: list[RequestOutput], prompt_tokens: int) -> Usage:
    return Usage.of(prompt_tokens, sum(output.num_output_tokens for output in outputs))


class ChunkFormat(Protocol):
    """How one endpoint spells its stream chunks."""

    def opening(self, index: int) -> BaseModel | None: ...

    def delta(self, index: int, text: str, finish_reason: str | None) -> BaseModel: ...

    def usage(self, usage: Usage) -> BaseModel: ...


async def stream_events(request: Request, submit: Callable[[], RequestGroup], count: int, chunks: ChunkFormat,
                        prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body. Text is sent as the engine releases it; each choice's last chunk carries its finish
    reason; with include_usage a final chunk with empty choices carries the usage, as OpenAI sends it."""
    for index in range(count):
        opening = chunks.opening(index)
        if opening is not None:
            yield sse(opening)
    output_tokens = [0] * count
    group = submit()
    async with group, cancel_on_disconnect(request, group):
        try:
            async for index, output in group:
                output_tokens[index] = output.num_output_tokens
                if output.delta_text or output.finished:
                    yield sse(chunks.delta(index, output.delta_text, output.finish_reason))
        except APIError as error:
            yield sse(error.body())
            yield DONE
            return
        if group.cancelled:
            return  # the client is gone: nobody reads a [DONE]
    if include_usage:
        yield sse(chunks.usage(Usage.of(prompt_tokens, sum(output_tokens))))
    yield DONE
