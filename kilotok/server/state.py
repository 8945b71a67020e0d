"""What every route handler needs: the engine (read-only from the event loop), its thread, the served
name and the API key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import Request

from kilotok.engine.llm_engine import LLMEngine
from kilotok.errors import InvalidRequestError
from kilotok.sampling_params import SamplingParams
from kilotok.server.async_engine import AsyncEngine
from kilotok.server.errors import AUTHENTICATION, APIError, bad_request


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

    def default_max_tokens(self, prompt_len: int) -> int:
        """Without max_tokens a request may fill the context window, or the whole KV cache if that is
        smaller (the engine rejects requests that could never fit, even alone)."""
        blocks = self.engine.block_manager
        lookahead = getattr(self.engine.scheduler, "lookahead_slots", 0)
        cache_slots = blocks.num_usable_blocks * blocks.block_size - lookahead
        return max(1, min(self.engine.max_model_len, cache_slots) - prompt_len)

    def validate_prompt(self, prompt_token_ids: list[int], params: SamplingParams, param: str) -> None:
        """The engine's own request checks (KV-cache room, vocabulary), which read only fixed settings."""
        try:
            self.engine.validate_prompt(prompt_token_ids, params)
        except InvalidRequestError as error:
            raise bad_request(str(error), param=param) from None


def server_state(request: Request) -> ServerState:
    return request.app.state.kilotok
