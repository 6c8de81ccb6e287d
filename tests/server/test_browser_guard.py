"""What a web page cannot make a visitor's browser do to a server on their machine: run a cross-origin "simple"
request (text/plain POST, no preflight) unless CORS allows its origin, or reach a server without API key under
a rebound DNS name (Host check, 403). CORS preflights are answered before auth, for allowed origins only."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from live_server import TINY_MODEL, RunningServer, start_server, tiny_engine

from ember.server.common.config import ServerConfig

APP_ORIGIN = "http://app.example:3000"
EVIL_ORIGIN = "https://evil.example"
KEY = "sk-browser-guard-1"
COMPLETION = b'{"model": "tiny-llama", "prompt": "Hi", "max_tokens": 2}'


@pytest.fixture(scope="module")
def open_server() -> Iterator[RunningServer]:
    """No API key, started with --host ember.lan, CORS allowing one origin."""
    config = ServerConfig(model_name=TINY_MODEL, allowed_origins=(APP_ORIGIN,), allowed_hosts=("ember.lan",))
    server = start_server(tiny_engine(), config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    server = start_server(
        tiny_engine(), ServerConfig(model_name=TINY_MODEL, api_keys=(KEY,), allowed_origins=(APP_ORIGIN,))
    )
    yield server
    server.stop()


def simple_post(server: RunningServer, headers: dict[str, str]) -> httpx.Response:
    """What a page's `fetch(url, {method: "POST", body})` or a form sends: text/plain, no preflight."""
    return httpx.post(
        f"{server.url}/v1/completions",
        content=COMPLETION,
        headers={"Content-Type": "text/plain", **headers},
        timeout=60,
    )


def prompt_tokens(server: RunningServer) -> int:
    return server.engine.stats().prompt_tokens_total


def test_a_cross_origin_simple_post_is_refused_before_it_runs(tiny_server: RunningServer) -> None:
    before = prompt_tokens(tiny_server)
    refused = simple_post(tiny_server, {"Origin": EVIL_ORIGIN})
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "origin_not_allowed" and EVIL_ORIGIN in error["message"]
    assert "--allowed-origins" in error["message"]
    assert "access-control-allow-origin" not in refused.headers
    assert simple_post(tiny_server, {"Origin": "null"}).status_code == 403  # sandboxed frames, file:// pages
    assert prompt_tokens(tiny_server) == before  # nothing reached the engine
    # The same request without a browser's Origin, or from the server's own origin, runs.
    assert simple_post(tiny_server, {}).status_code == 200
    assert simple_post(tiny_server, {"Origin": tiny_server.url}).status_code == 200


def test_cors_allows_the_configured_origin_only(open_server: RunningServer) -> None:
    allowed = simple_post(open_server, {"Origin": APP_ORIGIN})
    assert allowed.status_code == 200 and allowed.json()["choices"]
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    refused = simple_post(open_server, {"Origin": EVIL_ORIGIN})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"


def test_preflight_is_answered_before_auth_for_allowed_origins(keyed_server: RunningServer) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    answered = httpx.options(
        f"{keyed_server.url}/v1/chat/completions", headers={"Origin": APP_ORIGIN, **preflight}
    )
    assert answered.status_code == 200  # no key on a preflight, as browsers send it
    assert answered.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in answered.headers["access-control-allow-methods"]
    assert "authorization" in answered.headers["access-control-allow-headers"].lower()
    refused = httpx.options(
        f"{keyed_server.url}/v1/chat/completions", headers={"Origin": EVIL_ORIGIN, **preflight}
    )
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers

    # The real request after the preflight: its key is checked, and the reply (also a 401) carries CORS headers.
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    unauthorized = httpx.post(
        f"{keyed_server.url}/v1/chat/completions", json=body, headers={"Origin": APP_ORIGIN}
    )
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == APP_ORIGIN
    ok = httpx.post(
        f"{keyed_server.url}/v1/chat/completions",
        json=body,
        headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP_ORIGIN


def test_without_a_key_a_rebound_host_name_is_refused(open_server: RunningServer) -> None:
    port = open_server.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
        refused = httpx.get(f"{open_server.url}/v1/models", headers={"Host": host})
        assert refused.status_code == 403, host
        error = refused.json()["error"]
        assert error["code"] == "host_not_allowed" and "DNS rebinding" in error["message"]
    for host in (
        "localhost",
        f"localhost:{port}",
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        "ember.lan",
        "EMBER.LAN:80",
    ):
        assert httpx.get(f"{open_server.url}/v1/models", headers={"Host": host}).status_code == 200, host
    # Load balancers probe health under any name; it holds no user data.
    assert httpx.get(f"{open_server.url}/health", headers={"Host": "evil.example"}).status_code == 200


def test_with_a_key_any_host_name_is_served(keyed_server: RunningServer) -> None:
    headers = {"Host": "models.internal.example", "Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{keyed_server.url}/v1/models", headers=headers).status_code == 200
