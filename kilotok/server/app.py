"""The OpenAI-compatible FastAPI app around an already-loaded engine: its routes (with what each answers,
for the OpenAPI document of openapi.py), its API key, and the engine loop's lifetime. /v1 routes need the
API key when the server has one; /health and /metrics do not, so load balancers and Prometheus can reach
them without it (as with vLLM)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from kilotok.engine.llm_engine import LLMEngine
from kilotok.server.async_engine import AsyncEngine
from kilotok.server.endpoints import create_chat_completion, create_completion
from kilotok.server.errors import AUTHENTICATION, APIError, install_error_handlers
from kilotok.server.metrics import ServerMetrics
from kilotok.server.openapi import (
    CHAT_RESPONSES,
    COMPLETION_RESPONSES,
    HEALTH_RESPONSES,
    METRICS_DESCRIPTION,
    ServedFacts,
    install_openapi,
)
from kilotok.server.protocol import ChatCompletionRequest, CompletionRequest, Health, ModelCard, ModelList

ENGINE_STOP_TIMEOUT_S = 30.0


@dataclass
class ServerState:
    async_engine: AsyncEngine
    served_model_name: str
    api_key: str | None = None

    @property
    def engine(self) -> LLMEngine:
        """For reading fixed facts (tokenizer, max_model_len) only: the engine thread owns its state."""
        return self.async_engine.engine

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served_model_name:
            raise APIError(404, f"The model `{name}` does not exist: this server serves "
                                f"`{self.served_model_name}` (see GET /v1/models).", param="model",
                           code="model_not_found")

    def check_api_key(self, authorization: str | None) -> None:
        if self.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.api_key):
            raise APIError(401, "Incorrect or missing API key: send the server's key as "
                                "'Authorization: Bearer KEY'.", AUTHENTICATION, code="invalid_api_key")


def server_state(request: Request) -> ServerState:
    return request.app.state.kilotok


def require_api_key(request: Request) -> None:
    # Read from the request, not declared as a header parameter: the document states the key as a
    # security scheme, and only when the server has one.
    server_state(request).check_api_key(request.headers.get("authorization"))


State = Annotated[ServerState, Depends(server_state)]
public = APIRouter()
api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@public.get("/health", responses=HEALTH_RESPONSES)
async def health(state: State) -> Response:
    if state.async_engine.is_alive:
        return JSONResponse(Health(status="ok").model_dump())
    return JSONResponse(Health(status="engine stopped").model_dump(), status_code=503)


@public.get("/metrics", response_class=PlainTextResponse, response_description=METRICS_DESCRIPTION)
async def metrics(state: State) -> Response:
    return Response(state.async_engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@api.get("/models")
async def list_models(state: State) -> ModelList:
    return ModelList(data=[ModelCard(id=state.served_model_name, max_model_len=state.engine.max_model_len)])


@api.post("/completions", responses=COMPLETION_RESPONSES)
async def completions(body: CompletionRequest, request: Request, state: State):
    state.check_model(body.model)
    return await create_completion(body, request, state.async_engine, state.served_model_name)


@api.post("/chat/completions", responses=CHAT_RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State):
    state.check_model(body.model)
    return await create_chat_completion(body, request, state.async_engine, state.served_model_name)


def build_app(engine: LLMEngine, served_model_name: str, api_key: str | None = None,
              start_engine_thread: bool = True) -> FastAPI:
    """An OpenAI-compatible app serving `engine` under `served_model_name`. Startup starts the engine
    thread, unless the caller runs the loop itself (`app.state.kilotok.async_engine.run()`); shutdown
    (after uvicorn has let running responses finish) stops the loop, failing what is left."""
    spec = engine.config.spec
    metrics = ServerMetrics(served_model_name, engine, spec_depth=spec.depth if spec.enabled else 0)
    async_engine = AsyncEngine(engine, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_engine_thread:
            async_engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(async_engine.stop, ENGINE_STOP_TIMEOUT_S)

    app = FastAPI(title="kilotok", summary="OpenAI-compatible LLM server", lifespan=lifespan)
    app.state.kilotok = ServerState(async_engine, served_model_name, api_key)
    install_error_handlers(app)
    install_openapi(app, ServedFacts(served_model_name, engine.max_model_len, engine.model_config.vocab_size,
                                     api_key_required=api_key is not None))
    app.include_router(public)
    app.include_router(api)
    return app
