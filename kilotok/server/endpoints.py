"""POST /v1/completions and /v1/chat/completions: from a request body to validated engine requests, and
from the engine's outputs to one JSON body or a stream of server-sent events ending with `data: [DONE]`.

A body arrives validated against its schema (`protocol.py`: types, ranges, fields kilotok cannot honour).
The checks no schema can make happen here, once, before anything reaches the engine, so a bad request is
a 400 and never touches a running batch: the number of prompts times n, an explicit max_tokens past the
context window, and the engine's own checks (`new_request`: context window, KV-cache room, vocabulary,
sampling values), each fault with one message. A client that disconnects cancels its sequences at once,
so their KV blocks go back to the pool.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from kilotok.engine.llm_engine import CONTEXT_LENGTH_EXCEEDED, LLMEngine
from kilotok.engine.output import RequestOutput
from kilotok.errors import InvalidRequestError
from kilotok.sampling_params import SEED_MAX, SEED_MIN, SamplingParams
from kilotok.sequence import Sequence
from kilotok.server.async_engine import AsyncEngine, RequestGroup
from kilotok.server.errors import APIError, bad_request
from kilotok.server.protocol import (
    MAX_CHOICES,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    SamplingRequest,
    Usage,
    new_id,
    now_unix,
)

DONE = "data: [DONE]\n\n"
CLIENT_CLOSED_REQUEST = 499
"""The status nginx logs for a client that hung up before the response."""


async def create_completion(body: CompletionRequest, request: Request, async_engine: AsyncEngine, model: str):
    prompts = _completion_prompts(body.prompt, async_engine.engine)
    seqs = _engine_requests(body, prompts, async_engine.engine, param="prompt")
    chunks = CompletionChunks(new_id("cmpl"), model)

    def final(outputs: list[RequestOutput]) -> BaseModel:
        choices = [CompletionChoice(index=i, text=o.text, finish_reason=o.finish_reason) for i, o in enumerate(outputs)]
        return CompletionResponse(id=chunks.request_id, model=chunks.model, choices=choices,
                                  usage=_usage(outputs, prompts))

    return await _respond(request, async_engine, body, seqs, chunks, final, sum(len(ids) for ids in prompts))


async def create_chat_completion(body: ChatCompletionRequest, request: Request, async_engine: AsyncEngine,
                                 model: str):
    messages = [_message_dict(message) for message in body.messages]
    try:
        prompt = async_engine.engine.tokenizer.encode_chat(messages)
    except InvalidRequestError as error:
        raise bad_request(str(error), param="messages") from None
    seqs = _engine_requests(body, [prompt], async_engine.engine, param="messages")
    chunks = ChatChunks(new_id("chatcmpl"), model)

    def final(outputs: list[RequestOutput]) -> BaseModel:
        choices = [ChatChoice(index=i, message=AssistantMessage(content=o.text), finish_reason=o.finish_reason)
                   for i, o in enumerate(outputs)]
        return ChatCompletionResponse(id=chunks.request_id, model=chunks.model, choices=choices,
                                      usage=_usage(outputs, [prompt]))

    return await _respond(request, async_engine, body, seqs, chunks, final, len(prompt))


def _completion_prompts(prompt: str | list, engine: LLMEngine) -> list[list[int]]:
    """OpenAI's four prompt forms (validated, never empty): a string, strings, token ids, lists of token ids."""
    if isinstance(prompt, str):
        return [engine.tokenizer.encode(prompt)]
    if isinstance(prompt[0], str):
        return [engine.tokenizer.encode(text) for text in prompt]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(ids) for ids in prompt]


def _message_dict(message: ChatMessage) -> dict:
    """The plain {"role", "content"} form chat templates read; text parts are joined by newlines."""
    content = message.content
    if isinstance(content, list):
        content = "\n".join(part.text for part in content)
    return {"role": message.role, "content": content or ""}


def _engine_requests(body: SamplingRequest, prompts: list[list[int]], engine: LLMEngine, param: str) -> list[Sequence]:
    """One validated engine request per prompt and choice; choice index = prompt index * n + choice, as
    OpenAI numbers them. Choice i samples with seed + i, so choice 0 matches the same request with n=1."""
    if len(prompts) * body.n > MAX_CHOICES:
        raise bad_request(f"{len(prompts)} prompts times n={body.n} asks for more than {MAX_CHOICES} completions: "
                          "split the request", param="n")
    limit, wanted = engine.max_model_len, body.output_limit
    _check_output_limits(body, limit)
    seqs = []
    for ids in prompts:
        if wanted is not None and len(ids) < limit < len(ids) + wanted:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens; the request asks for {len(ids) + wanted}"
                f" ({len(ids)} in the prompt, {wanted} to generate): lower max_tokens or shorten the prompt.",
                param="max_tokens", code=CONTEXT_LENGTH_EXCEEDED)
        for choice in range(body.n):
            params = _sampling_params(body, choice, wanted or engine.output_room(len(ids)),
                                      engine.model_config.vocab_size)
            try:
                seqs.append(engine.new_request(ids, params))
            except InvalidRequestError as error:
                raise bad_request(str(error), param=error.param or param, code=error.code) from None
    return seqs


def _check_output_limits(body: SamplingRequest, limit: int) -> None:
    """Every output limit the body gives leaves room for a prompt token, as the schema states (at most
    max_model_len - 1), even a max_tokens that max_completion_tokens overrides."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name, None)
        if value is not None and value >= limit:
            raise bad_request(f"This model's maximum context length is {limit} tokens: {name}={value} leaves no "
                              f"room for the prompt; ask for at most {limit - 1}.", param=name,
                              code=CONTEXT_LENGTH_EXCEEDED)


def _sampling_params(body: SamplingRequest, choice: int, max_tokens: int, vocab_size: int) -> SamplingParams:
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            # A top-k past the vocabulary keeps every token, as the clamped one does; the clamp keeps a huge
            # value out of the sampler's int64 tensors.
            top_k=min(body.top_k or 0, vocab_size),
            min_p=body.min_p or 0.0,
            seed=None if body.seed is None else _choice_seed(body.seed, choice),
            max_tokens=max_tokens,
            stop=body.stop or None,
            stop_token_ids=body.stop_token_ids,
            ignore_eos=body.ignore_eos,
            include_stop_str_in_output=body.include_stop_str_in_output,
            speculate=body.speculate,
        )
    except InvalidRequestError as error:
        raise bad_request(str(error), param=error.param) from None


def _choice_seed(seed: int, choice: int) -> int:
    """seed + choice, wrapped into the range torch takes, so any integer is a seed, for any n."""
    return SEED_MIN + (seed + choice - SEED_MIN) % (SEED_MAX - SEED_MIN + 1)


def _usage(outputs: list[RequestOutput], prompts: list[list[int]]) -> Usage:
    return Usage.of(sum(len(ids) for ids in prompts), sum(output.num_output_tokens for output in outputs))


class StreamChunks(ABC):
    """Builds the chunks of one streamed response, all with the same id, creation time and model; a
    subclass says what an endpoint's chunk, a choice's opening and a text delta look like."""

    def __init__(self, request_id: str, model: str) -> None:
        self.request_id, self.model, self.created = request_id, model, now_unix()

    def opening(self, index: int) -> BaseModel | None:
        return None

    @abstractmethod
    def delta(self, index: int, text: str, finish_reason: str | None) -> BaseModel: ...

    def usage(self, usage: Usage) -> BaseModel:
        return self._chunk([], usage)

    @abstractmethod
    def _chunk(self, choices: list[BaseModel], usage: Usage | None = None) -> BaseModel: ...


class CompletionChunks(StreamChunks):
    def delta(self, index: int, text: str, finish_reason: str | None) -> BaseModel:
        return self._chunk([CompletionChoice(index=index, text=text, finish_reason=finish_reason)])

    def _chunk(self, choices: list[BaseModel], usage: Usage | None = None) -> BaseModel:
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=choices,
                                  usage=usage)


class ChatChunks(StreamChunks):
    def opening(self, index: int) -> BaseModel:
        return self._chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])

    def delta(self, index: int, text: str, finish_reason: str | None) -> BaseModel:
        delta = DeltaMessage(content=text or None)
        return self._chunk([ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason)])

    def _chunk(self, choices: list[BaseModel], usage: Usage | None = None) -> BaseModel:
        return ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=choices,
                                   usage=usage)


async def _respond(request: Request, async_engine: AsyncEngine, body: SamplingRequest, seqs: list[Sequence],
                   chunks: StreamChunks, final: Callable[[list[RequestOutput]], BaseModel], prompt_tokens: int):
    def submit() -> RequestGroup:
        return async_engine.generate(seqs)

    if body.stream:
        events = _stream_events(request, submit, len(seqs), chunks, prompt_tokens, body.include_usage_in_stream)
        return StreamingResponse(events, media_type="text/event-stream")
    outputs = await _collect(request, submit, len(seqs))
    # A client that disconnected before the answer was ready reads nothing.
    return Response(status_code=CLIENT_CLOSED_REQUEST) if outputs is None else final(outputs)


def _sse(payload: BaseModel | dict) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


@asynccontextmanager
async def _cancel_on_disconnect(request: Request, group: RequestGroup) -> AsyncIterator[None]:
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


async def _collect(request: Request, submit: Callable[[], RequestGroup], count: int) -> list[RequestOutput] | None:
    """Every sequence's final output in index order, or None when the client went away first."""
    final: list[RequestOutput | None] = [None] * count
    group = submit()
    async with group, _cancel_on_disconnect(request, group):
        async for index, output in group:
            if output.finished:
                final[index] = output
    return None if any(output is None for output in final) else final


async def _stream_events(request: Request, submit: Callable[[], RequestGroup], count: int, chunks: StreamChunks,
                         prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body. Text is sent as the engine releases it; each choice's last chunk carries its finish
    reason; with include_usage a final chunk with empty choices carries the usage, as OpenAI sends it."""
    for index in range(count):
        opening = chunks.opening(index)
        if opening is not None:
            yield _sse(opening)
    output_tokens = [0] * count
    group = submit()
    async with group, _cancel_on_disconnect(request, group):
        try:
            async for index, output in group:
                output_tokens[index] = output.num_output_tokens
                if output.delta_text or output.finished:
                    yield _sse(chunks.delta(index, output.delta_text, output.finish_reason))
        except APIError as error:
            yield _sse(error.body())
            yield DONE
            return
        if group.cancelled:
            return  # the client is gone: nobody reads a [DONE]
    if include_usage:
        yield _sse(chunks.usage(Usage.of(prompt_tokens, sum(output_tokens))))
    yield DONE
