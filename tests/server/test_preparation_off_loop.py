"""A request's preparation (templating, tokenizing, grammar checks) runs on the preparation threads, never on the
event loop: /health and other clients are answered while one is held, and a client that leaves during its
preparation never gets an engine request."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from live_server import TINY_MODEL, serve_in_thread, tiny_engine

from ember.engine.async_engine import AsyncEngine
from ember.server.app import build_app
from ember.server.common.config import ServerConfig
from ember.server.common.preparation import Preparation

HANG_GUARD_S = 120.0  # only stops a hung test; every wait below ends on a state change
USER = [{"role": "user", "content": "Hello there"}]


@dataclass
class Hold:
    """Blocks the first preparation that starts while armed, until released; records every thread that ran one."""

    armed: bool = False
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    threads: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> None:
        with self._lock:
            self.threads.append(threading.current_thread().name)
            hold, self.armed = self.armed, False
        if hold:
            self.entered.set()
            self.release.wait(HANG_GUARD_S)


@dataclass
class HeldServer:
    url: str
    engine: AsyncEngine
    preparation: Preparation
    hold: Hold
    stop: Callable[[], None]


@pytest.fixture(scope="module")
def held_server() -> Iterator[HeldServer]:
    engine = tiny_engine()
    app = build_app(engine, ServerConfig(model_name=TINY_MODEL))
    preparation = app.state.services.state.preparation
    hold = Hold()
    preparation.on_start = hold
    server, thread, url = serve_in_thread(app)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    yield HeldServer(url, engine, preparation, hold, stop)
    hold.release.set()
    stop()


@pytest.fixture()
def hold(held_server: HeldServer) -> Iterator[Hold]:
    fresh = Hold()
    held_server.preparation.on_start = fresh
    held_server.hold = fresh
    yield fresh
    fresh.release.set()


def wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_health_and_other_clients_are_answered_while_a_preparation_is_held(
    held_server: HeldServer, hold: Hold
) -> None:
    hold.armed = True
    replies: list[httpx.Response] = []
    body = {"model": TINY_MODEL, "messages": USER, "max_tokens": 3}
    chat = threading.Thread(
        target=lambda: replies.append(
            httpx.post(f"{held_server.url}/v1/chat/completions", json=body, timeout=HANG_GUARD_S)
        )
    )
    chat.start()
    try:
        assert hold.entered.wait(HANG_GUARD_S), "the chat's preparation never started"
        assert held_server.preparation.in_flight == 1
        assert httpx.get(f"{held_server.url}/health", timeout=HANG_GUARD_S).status_code == 200
        # Another client's preparation runs on the second thread meanwhile.
        tokenized = httpx.post(f"{held_server.url}/v1/tokenize", json={"prompt": "hi"}, timeout=HANG_GUARD_S)
        assert tokenized.status_code == 200 and tokenized.json()["count"] >= 1
        assert not replies, "the held chat answered before its preparation was released"
    finally:
        hold.release.set()
        chat.join(HANG_GUARD_S)
    assert replies[0].status_code == 200, replies[0].text
    assert replies[0].json()["choices"][0]["message"]["role"] == "assistant"
    assert all(name.startswith("ember-prepare") for name in hold.threads), hold.threads


def _raw_post(url: str, path: str, payload: dict[str, object]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    body = httpx.Request("POST", "/", json=payload).content
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/messages"])
def test_a_client_that_leaves_during_preparation_never_reaches_the_engine(
    held_server: HeldServer, hold: Hold, path: str
) -> None:
    engine, preparation = held_server.engine, held_server.preparation
    payload: dict[str, object] = {"model": TINY_MODEL, "max_tokens": 50, "ignore_eos": True}
    payload.update({"prompt": "Go on"} if path == "/v1/completions" else {"messages": USER})
    prompt_tokens_before = engine.stats().prompt_tokens_total
    abandoned_before = preparation.abandoned
    hold.armed = True
    sock = _raw_post(held_server.url, path, payload)
    try:
        assert hold.entered.wait(HANG_GUARD_S), "the preparation never started"
        sock.close()
        assert wait_for(lambda: preparation.abandoned == abandoned_before + 1), "the departure went unnoticed"
    finally:
        hold.release.set()
    assert wait_for(lambda: preparation.in_flight == 0)
    # The engine got nothing: it is idle, and no prompt was ever scheduled.
    assert wait_for(lambda: not engine.engine.has_unfinished())
    assert engine.stats().prompt_tokens_total == prompt_tokens_before
    assert engine.stats().num_running == 0 and engine.stats().num_waiting == 0
    # The server goes on serving.
    ok = httpx.post(
        f"{held_server.url}/v1/completions",
        json={"model": TINY_MODEL, "prompt": "Hi", "max_tokens": 2},
        timeout=HANG_GUARD_S,
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 2}),
        ("/v1/completions", {"prompt": "Hello", "max_tokens": 2}),
        ("/v1/messages", {"messages": USER, "max_tokens": 2}),
        ("/v1/messages/count_tokens", {"messages": USER}),
        ("/v1/tokenize", {"prompt": "Hello"}),
        ("/v1/tokenize", {"messages": USER}),
        ("/v1/detokenize", {"tokens": [1, 2, 3]}),
        ("/v1/embeddings", {"input": ["Hello", "world"]}),
    ],
)
def test_every_route_that_tokenizes_does_it_on_a_preparation_thread(
    held_server: HeldServer, hold: Hold, path: str, payload: dict[str, object]
) -> None:
    reply = httpx.post(
        f"{held_server.url}{path}", json={"model": TINY_MODEL, **payload}, timeout=HANG_GUARD_S
    )
    assert reply.status_code == 200, reply.text
    assert len(hold.threads) == 1 and hold.threads[0].startswith("ember-prepare"), hold.threads


def test_a_refusal_made_during_preparation_is_a_400_naming_its_parameter(held_server: HeldServer) -> None:
    abandoned_before = held_server.preparation.abandoned
    reply = httpx.post(
        f"{held_server.url}/v1/chat/completions",
        json={"model": TINY_MODEL, "messages": USER, "top_logprobs": 2},
        timeout=HANG_GUARD_S,
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "top_logprobs"
    assert held_server.preparation.in_flight == 0
    assert held_server.preparation.abandoned == abandoned_before, "a refusal is not a departure"
