"""Signed URLs: a URL that carries its own permission (one method, one path, until a time), so a client with no
API key can PUT or GET exactly that file, as with the cloud-storage URLs Fireworks hands out.

The signature is HMAC-SHA256 over the method, the path and the expiry, keyed by a secret each server makes at
start-up and never shows: a URL stops working when it expires or when the server restarts (a client asks for
new URLs, as it must after an hour anyway). Verification compares in constant time, and every refusal is the
same 403, so a forged or stale URL learns nothing about the resource.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from ember.server.common.errors import APIError

SIGNED_URL_LIFETIME_S = 3600  # as Fireworks' upload URLs (its SDK re-requests them after 45 minutes)


@dataclass(frozen=True)
class SignedRequest:
    method: str
    path: str  # the URL's path, unquoted
    expires: int  # unix seconds


class UrlSigner:
    def __init__(self, secret: bytes | None = None, lifetime_s: int = SIGNED_URL_LIFETIME_S) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.lifetime_s = lifetime_s

    def sign(self, base_url: str, method: str, path: str) -> str:
        """The full URL for `method` on `path` (under `base_url`, e.g. the request's own), valid for the
        lifetime."""
        expires = int(time.time()) + self.lifetime_s
        signature = self._signature(SignedRequest(method, path, expires))
        return (
            f"{base_url.rstrip('/')}{quote(path)}?{urlencode({'expires': expires, 'signature': signature})}"
        )

    def verify(self, method: str, path: str, expires: str | None, signature: str | None) -> None:
        """403 unless the URL was signed here for this method and path and has not expired."""
        refusal = APIError(
            403,
            "this signed URL is invalid or has expired; request a new one",
            code="signature_invalid",
        )
        if expires is None or signature is None or not expires.isdigit() or len(expires) > 12:
            raise refusal
        expected = self._signature(SignedRequest(method, path, int(expires)))
        if not hmac.compare_digest(expected, signature) or int(expires) < time.time():
            raise refusal

    def _signature(self, request: SignedRequest) -> str:
        message = f"{request.method}\n{request.path}\n{request.expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
