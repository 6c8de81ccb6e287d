"""A flooded waiting queue answers 429 with Retry-After; a client that leaves has its request aborted and
its KV blocks freed."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Callable, Iterator

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


def wait_for_state(condition: Callable[[], bool], timeout: float = 120.0) -> bool:
    """Polls a state of the server's engine. The deadline only stops a hang; it is far above any wait here."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def engine_idle(server: RunningServer) -> bool:
    """No request running or waiting, and every KV block back in the free pool."""
    blocks = server.engine.engine.scheduler.block_manager

    def idle() -> bool:
        stats = server.engine.stats()
        return (
            stats.num_running == 0
            and stats.num_waiting == 0
            and blocks.num_free_blocks == blocks.num_usable_blocks
        )

    return wait_for_state(idle)


def test_a_flooded_queue_gets_429_with_retry_after(small_server: RunningServer) -> None:
    engine = small_server.engine

    def post(body: dict) -> httpx.Response:
        return httpx.post(f"{small_server.url}/v1/completions", json=body, timeout=120)

    # Held between steps, the engine runs one request and queues one (max_waiting=1), whatever the CPU's speed.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, LONG)
        assert wait_for_state(lambda: engine.stats().num_running == 1)
        engine.pause()
        try:
            queued = pool.submit(post, LONG)
            assert wait_for_state(lambda: engine.stats().num_waiting == 1)
            refused = post(LONG)
        finally:
            engine.resume()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert engine_idle(small_server)
    assert post({**LONG, "max_tokens": 2}).status_code == 200


def _raw_request(server: RunningServer, body: bytes) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_is_aborted_and_its_blocks_freed(
    small_server: RunningServer, stream: bool
) -> None:
    engine = small_server.engine
    before = engine.stats().generation_tokens_total
    body = httpx.Request("POST", "/", json={**LONG, "max_tokens": 240, "stream": stream}).content
    engine.pause()
    try:
        sock = _raw_request(small_server, body)
        assert wait_for_state(lambda: engine.stats().num_waiting == 1)
        engine.resume(steps=1)  # prefill and the first token, then held: the request cannot reach its end
        engine.pause()
        assert engine.stats().generation_tokens_total - before == 1
        assert engine.stats().num_running == 1 and engine.stats().kv_usage > 0
        sock.close()
        assert wait_for_state(lambda: engine.stats().num_running == 0), "the request was not aborted"
    finally:
        engine.resume()
    assert engine_idle(small_server), "the aborted request still holds the engine"
    assert engine.stats().generation_tokens_total - before == 1
