"""A stand-in for `kilotok serve` that streams OpenAI-shaped chat chunks without a model, for testing the
bench's load generator: it records what each request asked and how many were in flight at once, and
counts vLLM-named speculative counters (2 drafts and 3 accepted tokens per request) on /metrics."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from kilotok.bench.client import free_port

MODEL_ID = "fake-model"
TOKEN_DELAY_S = 0.004
DRAFTS_PER_REQUEST = 2
ACCEPTED_PER_REQUEST = 3
# Longer requests are refused up front with a 400, as a server refuses one that could never fit its KV cache.
MAX_TOKENS_LIMIT = 1000
HOLD_TIMEOUT_S = 10.0


@dataclass
class FakeServerState:
    bodies: list[dict] = field(default_factory=list)
    in_flight: int = 0
    in_flight_at_arrival: list[int] = field(default_factory=list)
    completed: int = 0
    # Off: /metrics exports no speculative counters, as a server without speculation may not.
    speculative: bool = True
    # Streams wait (up to HOLD_TIMEOUT_S) until this many requests have arrived, so that a slow machine
    # cannot finish the first request before a concurrent client has sent the others.
    hold_until_arrivals: int = 0


def _chunk(delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> str:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID,
            "choices": choices, "usage": usage}
    return f"data: {json.dumps(body)}\n\n"


def build_app(state: FakeServerState) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "test"}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        lines = [
            "# TYPE vllm:spec_decode_num_drafts counter",
            f"vllm:spec_decode_num_drafts_total{{engine=\"0\"}} {DRAFTS_PER_REQUEST * state.completed}",
            "# TYPE vllm:spec_decode_num_accepted_tokens counter",
            f"vllm:spec_decode_num_accepted_tokens_total{{engine=\"0\"}} {ACCEPTED_PER_REQUEST * state.completed}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n" if state.speculative else "")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        state.bodies.append(body)
        if body["max_tokens"] > MAX_TOKENS_LIMIT:
            error = {"message": "this request can never fit", "type": "invalid_request_error", "code": 400}
            return JSONResponse({"error": error}, status_code=400)
        state.in_flight_at_arrival.append(state.in_flight + 1)
        state.in_flight += 1

        async def events():
            deadline = time.monotonic() + HOLD_TIMEOUT_S
            while len(state.in_flight_at_arrival) < state.hold_until_arrivals and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            yield _chunk({"role": "assistant", "content": ""})
            # Two tokens in the first text chunk, as speculative decoding sends them.
            sent = min(2, body["max_tokens"])
            yield _chunk({"content": "ab"[:sent]})
            for _ in range(body["max_tokens"] - sent):
                await asyncio.sleep(TOKEN_DELAY_S)
                yield _chunk({"content": "x"})
            yield _chunk({}, finish_reason="length")
            yield _chunk({}, usage={"prompt_tokens": 7, "completion_tokens": body["max_tokens"],
                                    "total_tokens": 7 + body["max_tokens"]})
            state.completed += 1
            # Out of flight before [DONE]: the client cannot send its next request before reading it.
            state.in_flight -= 1
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class FakeServer:
    """The fake app under uvicorn on a loopback port, in a background thread."""

    def __init__(self) -> None:
        self.state = FakeServerState()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(build_app(self.state), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
