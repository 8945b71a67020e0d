"""Builds the FastAPI app around an already-loaded engine; the engine thread lives as long as the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kilotok.engine.llm_engine import LLMEngine
from kilotok.server.async_engine import AsyncEngine
from kilotok.server.errors import install_error_handlers
from kilotok.server.metrics import ServerMetrics
from kilotok.server.routes import api, public
from kilotok.server.state import ServerState

ENGINE_STOP_TIMEOUT_S = 30.0


def build_app(engine: LLMEngine, served_model_name: str, api_key: str | None = None,
              start_engine_thread: bool = True) -> FastAPI:
    """An OpenAI-compatible app serving `engine` under `served_model_name`. Startup starts the engine
    thread, unless the caller runs the loop itself (`app.state.kilotok.async_engine.run()`); shutdown
    (after uvicorn has let running responses finish) stops the loop, failing what is left."""
    spec = engine.config.spec
    metrics = ServerMetrics(served_model_name, spec_depth=spec.depth if spec.enabled else 0)
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
    app.include_router(public)
    app.include_router(api)
    return app
