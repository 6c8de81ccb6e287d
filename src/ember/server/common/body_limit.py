"""Refuses request bodies above a size limit with a 413, before they are read into memory."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.server.common.errors import APIError, error_response


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
