"""The ASGI middleware around every route: bearer API keys on /v1 routes (compared in constant time, never
logged), and the request-body size limit (a 413 before the body is read into memory)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.server.common.errors import APIError, error_response

API_KEYS_ENV = "EMBER_API_KEYS"
PROTECTED_PREFIXES = ("/v1/", "/inference/v1/")


def api_keys_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Keys from EMBER_API_KEYS, comma-separated (the CLI's --api-key adds to these)."""
    raw = (environ if environ is not None else dict(os.environ)).get(API_KEYS_ENV, "")
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key of `Authorization: Bearer <key>` (OpenAI, Fireworks SDKs) or `x-api-key` (Anthropic SDK)."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return headers.get(b"x-api-key") or None


def key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    # Compare against every key, without stopping early, so timing reveals neither the key nor its position.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


class APIKeyMiddleware:
    """401 with OpenAI's (or Anthropic's) error body unless a configured key is presented."""

    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = tuple(key.encode("utf-8") for key in api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        presented = presented_key(headers)
        if presented is None or not key_matches(presented, self.keys):
            message = (
                "missing API key: send Authorization: Bearer <key>"
                if presented is None
                else "invalid API key provided"
            )
            error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await error_response(error, scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- the request-body size limit --------------------------------------------------------------------------


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body exceeds the limit of {limit} bytes", code="request_too_large"
        )


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, exempt: Callable[[str], bool] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.exempt = exempt  # paths that enforce their own limit while streaming (uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt is not None and self.exempt(scope["path"])):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await error_response(BodyTooLarge(self.max_body_bytes), scope["path"])(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            # Chunked bodies declare no length; count what arrives. The route's error handler turns this into a 413.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        await self.app(scope, counting_receive, send)
