"""A flooded waiting queue answers 429 with Retry-After; a client that leaves has its request aborted and
its KV blocks freed."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from live_server import TINY_MODEL, RunningServer, start_server, tiny_engine

from ember.server.common.config import ServerConfig

LONG = {"model": TINY_MODEL, "prompt": "Go on and on", "max_tokens": 200, "ignore_eos": True}


@pytest.fixture(scope="module")
def small_server() -> Iterator[RunningServer]:
    server = start_server(
        tiny_engine(max_num_seqs=1, max_num_batched_tokens=32, max_waiting=1),
        ServerConfig(model_name=TINY_MODEL),
    )
    yield server
    server.stop()


def engine_idle(server: RunningServer, timeout: float = 10.0) -> bool:
    """No request running or waiting, and every KV block back in the free pool."""
    blocks = server.engine.engine.scheduler.block_manager
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = server.engine.stats()
        if (
            stats.num_running == 0
            and stats.num_waiting == 0
            and blocks.num_free_blocks == blocks.num_usable_blocks
        ):
            return True
        time.sleep(0.02)
    return False


def test_a_flooded_queue_gets_429_with_retry_after(small_server: RunningServer) -> None:
    def post(_: int) -> httpx.Response:
        return httpx.post(f"{small_server.url}/v1/completions", json=LONG, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(post, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert engine_idle(small_server)
    assert (
        httpx.post(
            f"{small_server.url}/v1/completions", json={**LONG, "max_tokens": 2}, timeout=60
        ).status_code
        == 200
    )


def _raw_request(server: RunningServer, body: bytes) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_is_aborted_and_its_blocks_freed(
    small_server: RunningServer, stream: bool
) -> None:
    before = small_server.engine.stats().generation_tokens_total
    body = httpx.Request("POST", "/", json={**LONG, "max_tokens": 240, "stream": stream}).content
    sock = _raw_request(small_server, body)
    deadline = time.monotonic() + 20
    while small_server.engine.stats().num_running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert small_server.engine.stats().num_running == 1 and small_server.engine.stats().kv_usage > 0
    sock.close()
    assert engine_idle(small_server), "the aborted request still holds the engine"
    generated = small_server.engine.stats().generation_tokens_total - before
    assert generated < 240, "the request ran to its end instead of being aborted"
