"""The HTTP routes. /v1 routes need the API key when the server has one; /health and /metrics do not, so
load balancers and Prometheus can reach them without it (as with vLLM)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from kilotok.server.chat import create_chat_completion
from kilotok.server.completions import create_completion
from kilotok.server.protocol import ChatCompletionRequest, CompletionRequest
from kilotok.server.responses import ModelCard, ModelList
from kilotok.server.state import ServerState, server_state


def require_api_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    server_state(request).check_api_key(authorization)


State = Annotated[ServerState, Depends(server_state)]
public = APIRouter()
api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@public.get("/health")
async def health(state: State) -> Response:
    if state.async_engine.is_alive:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "engine stopped"}, status_code=503)


@public.get("/metrics")
async def metrics(state: State) -> Response:
    return Response(state.async_engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@api.get("/models")
async def list_models(state: State) -> ModelList:
    return ModelList(data=[ModelCard(id=state.served_model_name, max_model_len=state.engine.max_model_len)])


@api.post("/completions")
async def completions(body: CompletionRequest, request: Request, state: State):
    return await create_completion(body, request, state)


@api.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           state: State):
    return await create_chat_completion(body, request, state)
