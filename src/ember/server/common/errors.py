"""API errors and their JSON bodies: OpenAI's envelope everywhere, Anthropic's shape under /v1/messages."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ember.engine.errors import EngineDeadError, QueueFullError

logger = logging.getLogger(__name__)

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


class APIError(Exception):
    """A request that cannot be served, with the HTTP status and the fields of OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _OPENAI_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.headers = headers or {}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def is_anthropic_path(path: str) -> bool:
    return path.endswith("/v1/messages") or path.endswith("/v1/messages/count_tokens")


def error_body(error: APIError, path: str) -> dict[str, object]:
    if is_anthropic_path(path):
        return {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(error.status, "api_error"), "message": error.message},
        }
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }


def error_response(error: APIError, path: str) -> JSONResponse:
    return JSONResponse(error_body(error, path), status_code=error.status, headers=error.headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def as_api_error(exc: Exception) -> APIError:
    """The APIError a failure maps to; anything unexpected is a 500 and gets logged with its traceback."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), code="rate_limit_exceeded", headers=_retry_after(exc.retry_after_s))
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), code="engine_unavailable", headers=_retry_after(5.0))
    if isinstance(
        exc, ClientDisconnect
    ):  # left mid-body (an upload cut off): 499 as ClientLeft, nobody reads it
        return APIError(499, "the client closed the connection", code="client_closed_request")
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return APIError(
                404, "no such route; see GET /v1/models and the /v1 API reference", code="not_found"
            )
        return APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return APIError(400, f"{loc}: {first.get('msg', 'invalid request')}", param=loc or None)
    logger.error("internal error while serving a request", exc_info=exc)
    return APIError(500, "internal server error; the server log has the details", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> Response:
        return error_response(as_api_error(exc), request.url.path)

    for exc_type in (
        APIError,
        QueueFullError,
        EngineDeadError,
        StarletteHTTPException,
        RequestValidationError,
        ClientDisconnect,  # its own handler: the catch-all one logs a traceback and re-raises to uvicorn
        Exception,
    ):
        app.add_exception_handler(exc_type, handle)
