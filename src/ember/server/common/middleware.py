"""The ASGI middleware around every route: bearer API keys on /v1 routes (and the root /tokenize, /detokenize) (compared in constant time, never
logged), each key's tenant put on the request, `/accounts/{a}/` paths kept to the key's own account, and the
request-body size limit (a 413 before the body is read into memory)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.server.common.api_keys import KeyRing
from ember.server.common.errors import APIError, error_response
from ember.server.common.tenancy import Tenant, enter_tenant, leave_tenant

API_KEYS_ENV = "EMBER_API_KEYS"
ADMIN_API_KEYS_ENV = "EMBER_ADMIN_API_KEYS"
API_KEYS_FILE_ENV = "EMBER_API_KEYS_FILE"
PROTECTED_PREFIXES = ("/v1/", "/inference/v1/")
PROTECTED_ROOT_PATHS = ("/tokenize", "/detokenize")  # vLLM's root aliases of /v1 routes: keyed like them
_ACCOUNT_PATH = re.compile(r"/(?:inference/)?v1/accounts/([^/]+)(/[^/]*)?")
_READ_METHODS = ("GET", "HEAD")


def api_keys_from_env(environ: dict[str, str] | None = None, name: str = API_KEYS_ENV) -> tuple[str, ...]:
    """Keys from EMBER_API_KEYS (or another variable), comma-separated (the CLI's --api-key adds to these)."""
    raw = (environ if environ is not None else dict(os.environ)).get(name, "")
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key of `Authorization: Bearer <key>` (OpenAI, Fireworks SDKs) or `x-api-key` (Anthropic SDK)."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return headers.get(b"x-api-key") or None


class APIKeyMiddleware:
    """Finds each /v1 request's tenant: with keys, the tenant of the presented key (401 with OpenAI's or
    Anthropic's error body without a valid one); without keys, `open_tenant` (one tenant sees everything).

    A path under `/accounts/{a}/` of another account than the key's is a 404, as if it did not exist; the
    server's base models (GET `/accounts/<public_account>/models...`) are readable by every key."""

    def __init__(self, app: ASGIApp, keys: KeyRing | None, open_tenant: Tenant, public_account: str) -> None:
        self.app = app
        self.keys = keys
        self.open_tenant = open_tenant
        self.public_account = public_account

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (
            scope["path"].startswith(PROTECTED_PREFIXES) or scope["path"] in PROTECTED_ROOT_PATHS
        ):
            await self.app(scope, receive, send)
            return
        tenant = self.open_tenant if self.keys is None else self._tenant(scope)
        if tenant is None:
            presented = presented_key(dict(scope["headers"]))
            message = (
                "missing API key: send Authorization: Bearer <key>"
                if presented is None
                else "invalid API key provided"
            )
            error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await error_response(error, scope["path"])(scope, receive, send)
            return
        refusal = self._account_refusal(scope, tenant)
        if refusal is not None:
            await error_response(refusal, scope["path"])(scope, receive, send)
            return
        scope.setdefault("state", {})["tenant"] = tenant
        token = enter_tenant(tenant)
        try:
            await self.app(scope, receive, send)
        finally:
            leave_tenant(token)

    def _tenant(self, scope: Scope) -> Tenant | None:
        presented = presented_key(dict(scope["headers"]))
        if presented is None or self.keys is None:
            return None
        return self.keys.tenant_for(presented)

    def _account_refusal(self, scope: Scope, tenant: Tenant) -> APIError | None:
        match = _ACCOUNT_PATH.match(scope["path"])
        if match is None or tenant.may_use_account(match.group(1)):
            return None
        account, collection = match.group(1), match.group(2) or ""
        if account == self.public_account and collection == "/models" and scope["method"] in _READ_METHODS:
            return None
        return APIError(
            404,
            f"account {account!r} not found; this API key acts for account {tenant.account!r}",
            param="account",
            code="not_found",
        )


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
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_body_bytes:
                await error_response(BodyTooLarge(self.max_body_bytes), scope["path"])(scope, receive, send)
                return
            if b"transfer-encoding" not in headers:
                # The HTTP server delivers no more body than the declared length: nothing to count.
                await self.app(scope, receive, send)
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
