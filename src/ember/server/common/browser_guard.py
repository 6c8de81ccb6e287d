"""What keeps a web page from driving the server through a visitor's browser: the Host check against DNS
rebinding (when no API key is set) and the refusal of cross-origin requests whose origin CORS does not allow;
plus CORS itself (Starlette's CORSMiddleware) for the origins that are allowed (`--allowed-origins`).

Why both: a page on evil.example can make the browser POST to http://127.0.0.1:8000 with a "simple" request
(text/plain body, no preflight); CORS only hides the reply, the request still runs. Refusing a request whose
`Origin` is foreign stops it from running at all. A page can also rebind its own name to 127.0.0.1; its
requests are then same-origin for the browser but carry `Host: evil.example`, which the Host check refuses.
With an API key set, neither attack works (the page does not have the key), so the Host check is off.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.server.common.errors import APIError, error_response

UNCHECKED_PATHS = (
    "/health",
    "/metrics",
    "/ping",
)  # no user data, and probed by load balancers under any name
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def host_and_port(netloc: str, scheme: str = "http") -> tuple[str, int | None]:
    """A Host header or URL netloc as (lower-case name, port); the scheme's default port when none is given:
    `[::1]:8000` -> ("::1", 8000)."""
    netloc = netloc.strip().lower()
    if netloc.startswith("[") and "]" in netloc:
        end = netloc.index("]")
        name, rest = netloc[1:end], netloc[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif netloc.count(":") > 1:  # a bare IPv6 address (as --host takes it), no port
        name, port_text = netloc, ""
    else:
        name, sep, port_text = netloc.rpartition(":")
        if not sep or not port_text.isdigit():
            name, port_text = netloc, ""
    return name, int(port_text) if port_text else _DEFAULT_PORTS.get(scheme)


def host_name(host_header: str) -> str:
    return host_and_port(host_header)[0]


def is_rebinding_safe(name: str, allowed_hosts: frozenset[str]) -> bool:
    """Whether a Host name cannot come from a DNS-rebinding page: an IP address (a page cannot make the browser
    send one unless it was loaded from that address), localhost names (never resolved through DNS), or a name
    the operator allowed (the --host name, --allowed-hosts)."""
    if name == "localhost" or name.endswith(".localhost") or name in allowed_hosts or "*" in allowed_hosts:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def origin_is_valid(origin: str) -> bool:
    """`*` or scheme://host[:port] with nothing after it, as browsers send in `Origin`."""
    if origin == "*":
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.path and "?" not in origin


def is_same_origin(origin: str, host_header: str, scheme: str) -> bool:
    """Whether a browser's `Origin` names this server as the request reached it (a page it served itself)."""
    parts = urlsplit(origin)
    if not parts.netloc or not host_header:
        return False
    return host_and_port(parts.netloc, parts.scheme) == host_and_port(host_header, scheme)


class BrowserGuardMiddleware:
    """403 for a request whose Origin is neither this server nor an allowed origin, and (with `check_host`)
    for a request whose Host a rebinding page could have sent."""

    def __init__(
        self,
        app: ASGIApp,
        allowed_origins: tuple[str, ...],
        check_host: bool,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.allowed_origins = frozenset(allowed_origins)
        self.check_host = check_host
        self.allowed_hosts = frozenset(host_name(h) if h != "*" else h for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCHECKED_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await error_response(refusal, scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> APIError | None:
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.check_host and host and not is_rebinding_safe(host_name(host), self.allowed_hosts):
            return APIError(
                403,
                f"requests for host {host_name(host)!r} are refused: this server has no API key, so it answers "
                "only to localhost, IP addresses and the name it was started with (--host, --allowed-hosts); "
                "this protects it from DNS rebinding",
                code="host_not_allowed",
            )
        origin = headers.get(b"origin")
        if origin is None or "*" in self.allowed_origins:
            return None
        origin_text = origin.decode("latin-1")
        if origin_text in self.allowed_origins or is_same_origin(
            origin_text, host, scope.get("scheme", "http")
        ):
            return None
        return APIError(
            403,
            f"cross-origin request from {origin_text!r} refused: the origin is not allowed "
            "(start ember serve with --allowed-origins to allow it)",
            code="origin_not_allowed",
        )


def install_browser_guard(
    app: FastAPI, allowed_origins: tuple[str, ...], check_host: bool, allowed_hosts: tuple[str, ...]
) -> None:
    """Add CORS (answering preflights before auth) and, outside it, the guard; call after the other
    middleware, so these run first."""
    if allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allowed_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=False,  # bearer keys, no cookies
            expose_headers=["*"],
        )
    app.add_middleware(
        BrowserGuardMiddleware,
        allowed_origins=allowed_origins,
        check_host=check_host,
        allowed_hosts=allowed_hosts,
    )
