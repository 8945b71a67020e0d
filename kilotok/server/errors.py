"""Errors shaped like OpenAI's, `{"error": {"message", "type", "param", "code"}}`, for every failure path:
our own checks, FastAPI's validation (its 422 becomes a 400, as OpenAI clients expect), unknown routes,
methods a route does not take (a 405 with the `Allow` header), and bugs (500), so that no client ever has
to parse a second format."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kilotok.errors import InvalidRequestError, KilotokError
from kilotok.server.protocol import ErrorDetail, ErrorResponse

logger = logging.getLogger("kilotok.server")

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """A request the server answers with an error status instead of a completion."""

    def __init__(self, status: int, message: str, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, INVALID_REQUEST, param, code)


def server_error(message: str) -> APIError:
    return APIError(500, message, SERVER_ERROR)


def validation_error(error: RequestValidationError) -> APIError:
    """The first problem pydantic found, with the field path as `param` (e.g. `messages.0.content`)."""
    problems = error.errors()
    if not problems:
        return bad_request("the request body is invalid")
    first = problems[0]
    if first.get("type") == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('msg')}")
    param = _field_path(first, error.body)
    where = f"field {param!r}: " if param else "the request body: "
    extra = f" ({len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return bad_request(f"{where}{first.get('msg')}{extra}", param=param)


def _field_path(problem: dict, body: Any) -> str | None:
    """The dotted path in the body of the field a problem is about. Pydantic's location also names the
    member of a union it tried (`prompt.token ids.0`): such a name does not step into the body, so it is
    dropped, unless it is the field a `missing` problem reports."""
    location = list(problem.get("loc", ()))
    if location[:1] == ["body"]:
        location = location[1:]
    names, value = [], body
    for position, part in enumerate(location):
        if isinstance(value, dict) and part in value or (
                isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)):
            value = value[part]
        elif problem.get("type") != "missing" or position < len(location) - 1:
            continue
        names.append(str(part))
    return ".".join(names) or None


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, error: APIError) -> JSONResponse:
        return error.response()

    async def on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(error).response()

    async def on_kilotok_error(_: Request, error: KilotokError) -> JSONResponse:
        if isinstance(error, InvalidRequestError):
            return bad_request(str(error), param=error.param, code=error.code).response()
        logger.error("request failed: %s", error)
        return server_error(str(error)).response()

    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = NOT_FOUND if error.status_code == 404 else INVALID_REQUEST
        message = str(error.detail)
        if error.status_code == 405:
            # Starlette names the route's methods in the exception's Allow header (RFC 9110 requires it).
            message = f"{request.method} is not allowed on {request.url.path}: use {error.headers['Allow']}"
        return APIError(error.status_code, message, kind).response(error.headers)

    async def on_unexpected_error(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error while handling a request")
        return server_error(f"internal error: {type(error).__name__}: {error}").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(KilotokError, on_kilotok_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
