"""The OpenAPI document (GET /openapi.json) is the server's contract, so it says all the server does: each
route's status codes with OpenAI's error body, the event stream and Prometheus text beside JSON, and what
only the running server knows: the served model's name, its context window and vocabulary, and whether
/v1 takes a key. tests/server/test_schema.py holds the server to it with schemathesis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from kilotok.server.protocol import (
    MAX_CHOICES,
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionResponse,
    ErrorResponse,
    Health,
)

SCHEMAS = "#/components/schemas/"
BEARER = "bearer"


def _error(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


GENERATION_ERRORS = {
    400: _error("A body the schema does not allow (`param` names the field), or one the running server cannot "
                "serve, which no schema can tell: a prompt over the context window, or max_tokens past it, "
                "(`code: context_length_exceeded`), a request larger than the whole KV cache, or more than "
                f"{MAX_CHOICES} completions (prompts times n)."),
    404: _error("`model` names a model this server does not serve (`code: model_not_found`)."),
    500: _error("The engine failed while running the request."),
    503: _error("The server is shutting down."),
}


def _event_stream(chunk: type[BaseModel]) -> dict:
    """Server-sent events, each described by `itemSchema` (OpenAPI 3.2's form, which FastAPI writes too):
    a chunk, the error that ended the stream, or the closing `[DONE]`."""
    json_data = {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [{"$ref": SCHEMAS + chunk.__name__},
                                             {"$ref": SCHEMAS + ErrorResponse.__name__}]}}
    return {"itemSchema": {"type": "object", "required": ["data"],
                           "properties": {"data": {"anyOf": [{"const": "[DONE]"}, json_data]}}}}


def generation_responses(body: type[BaseModel], chunk: type[BaseModel]) -> dict:
    ok = {"model": body, "description": "The answer: one JSON body, or with `stream: true` server-sent events "
                                        "ending with `data: [DONE]`.",
          "content": {"text/event-stream": _event_stream(chunk)}}
    return {200: ok, **GENERATION_ERRORS}


COMPLETION_RESPONSES = generation_responses(CompletionResponse, CompletionResponse)
CHAT_RESPONSES = generation_responses(ChatCompletionResponse, ChatCompletionChunk)
HEALTH_RESPONSES = {200: {"model": Health, "description": "The engine loop is running."},
                    503: {"model": Health, "description": "The engine loop has stopped."}}
METRICS_DESCRIPTION = "Prometheus text exposition, under vLLM's metric names."
STREAM_CHUNKS = (CompletionResponse, ChatCompletionChunk)


@dataclass(frozen=True)
class ServedFacts:
    model_name: str
    max_model_len: int
    vocab_size: int
    api_key_required: bool


def install_openapi(app: FastAPI, facts: ServedFacts) -> None:
    """Make `app.openapi()` (and so GET /openapi.json) describe this server, `facts` included."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()  # FastAPI's own, cached in app.openapi_schema: amended in place
            _drop_unprocessable(document)
            _add_stream_chunks(document)
            _describe_served_model(document, facts)
            if facts.api_key_required:
                _require_bearer_key(document)
        return app.openapi_schema

    app.openapi = openapi


def _operations(document: dict) -> list[tuple[str, dict]]:
    return [(path, operation) for path, item in document["paths"].items() for operation in item.values()]


def _drop_unprocessable(document: dict) -> None:
    """FastAPI documents a 422 for every body; errors.py answers validation errors with a 400 instead."""
    for _, operation in _operations(document):
        operation["responses"].pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        document["components"]["schemas"].pop(name, None)


def _add_stream_chunks(document: dict) -> None:
    """The chunk models the event streams refer to; a model no route names is not in FastAPI's components."""
    schemas = document["components"]["schemas"]
    for chunk in STREAM_CHUNKS:
        schema = chunk.model_json_schema(ref_template=SCHEMAS + "{model}", mode="serialization")
        for name, definition in {**schema.pop("$defs", {}), chunk.__name__: schema}.items():
            schemas.setdefault(name, definition)


def _describe_served_model(document: dict, facts: ServedFacts) -> None:
    """Limits that hold for every request to this server: the one model name, at most max_model_len - 1
    tokens to generate or in a token-id prompt (at least one is left for the other), ids inside the
    vocabulary."""
    schemas = document["components"]["schemas"]
    longest = facts.max_model_len - 1
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        fields = schemas[name]["properties"]
        fields["model"]["enum"] = [facts.model_name, None]
        for limit in ("max_tokens", "max_completion_tokens"):
            if limit in fields:
                fields[limit]["maximum"] = longest
    _bound_token_ids(schemas["CompletionRequest"]["properties"]["prompt"], longest, facts.vocab_size - 1)


def _bound_token_ids(schema: Any, longest: int, largest_id: int) -> None:
    if isinstance(schema, list):
        for member in schema:
            _bound_token_ids(member, longest, largest_id)
    elif isinstance(schema, dict):
        if schema.get("type") == "array" and schema.get("items", {}).get("type") == "integer":
            schema["maxItems"] = longest
            schema["items"]["maximum"] = largest_id
        for member in schema.values():
            _bound_token_ids(member, longest, largest_id)


def _require_bearer_key(document: dict) -> None:
    document["components"]["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "The server's --api-key."}}
    unauthorized = {"description": "The API key is missing or wrong (`code: invalid_api_key`).",
                    "content": {"application/json": {"schema": {"$ref": SCHEMAS + ErrorResponse.__name__}}}}
    for path, operation in _operations(document):
        if path.startswith("/v1/"):
            operation["security"] = [{BEARER: []}]
            operation["responses"]["401"] = unauthorized
