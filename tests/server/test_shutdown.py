"""`ember serve` stopped by SIGTERM or SIGINT as an operator stops it: no new connections, the requests in flight
finish within --drain-timeout, those still running then end with an error (a stream: its error event and
[DONE]; a whole response: 503), and the process exits 0 with no traceback in its log."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from serve_process import DEFAULT_MODEL, HANG_GUARD_S, ServeProcess, StreamClient, start_serve

pytestmark = pytest.mark.timeout(900)  # a hang guard only: every wait below is on a state

DRAGON = (
    "Write a very long story about a dragon who learns to bake bread."  # greedy SmolLM2 runs to max_tokens
)


def completion_stream(serve: ServeProcess, max_tokens: int) -> StreamClient:
    body = {"model": DEFAULT_MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens}
    body |= {"stream": True, "ignore_eos": True, "temperature": 0}
    return StreamClient(f"{serve.url}/v1/completions", body).start()


def metric(serve: ServeProcess, name: str) -> float:
    text = httpx.get(f"{serve.url}/metrics", timeout=30).text
    match = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match[1])


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def refuses_connections(serve: ServeProcess) -> bool:
    """True once a connection is refused. A probe that lands in the accept backlog just as the listener closes is
    dropped without a response: not served, but not yet a refusal either, so the caller polls again."""
    try:
        httpx.get(f"{serve.url}/health", timeout=10)
    except httpx.ConnectError:
        return True
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return False
    return False


def assert_clean_exit(serve: ServeProcess) -> str:
    assert serve.wait() == 0, serve.log_text()[-3000:]
    log = serve.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    return log


def shutdown_error(stream: StreamClient) -> dict[str, object]:
    """The stream's error event, checked to be followed only by [DONE]."""
    assert stream.error is None, stream.error
    assert stream.lines[-1] == "data: [DONE]", stream.lines[-3:]
    error = json.loads(stream.lines[-2][6:])["error"]
    assert error["type"] == "server_error" and error["code"] == "engine_unavailable", error
    assert "the server is shutting down" in error["message"]
    return error


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_requests_still_running_at_the_drain_timeout_end_with_an_error(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    serve = start_serve(tmp_path, "--drain-timeout", "1", "--kv-cache-gib", "0.5")
    try:
        stream = completion_stream(serve, max_tokens=3000)
        whole = StreamClient(
            f"{serve.url}/v1/chat/completions",
            {
                "model": DEFAULT_MODEL,
                "messages": [{"role": "user", "content": "Tell me about bread."}],
                "max_tokens": 3000,
                "ignore_eos": True,
            },
        ).start()
        anthropic = StreamClient(
            f"{serve.url}/v1/messages",
            {
                "model": DEFAULT_MODEL,
                "max_tokens": 3000,
                "temperature": 0,
                "stream": True,
                "messages": [{"role": "user", "content": DRAGON}],
            },
        ).start()
        stream.wait_first()
        anthropic.wait_first()
        wait_until(lambda: metric(serve, "vllm:num_requests_running") == 3, "all three requests to run")

        serve.process.send_signal(stop_signal)
        for client in (stream, whole, anthropic):
            client.wait_ended()
        log = assert_clean_exit(serve)
    finally:
        serve.kill()

    error = shutdown_error(stream)
    assert "drain timeout" in str(error["message"])
    assert stream.text(), "the stream sent text before it was ended"

    assert whole.status == 503, whole.lines
    body = json.loads("".join(whole.lines))
    assert body["error"]["code"] == "engine_unavailable" and "shutting down" in body["error"]["message"]

    # Anthropic's stream ends with its own `error` event (it has no [DONE]).
    assert anthropic.lines[0] == "event: message_start" and anthropic.lines[-2] == "event: error"
    event = json.loads(anthropic.lines[-1][6:])
    assert event["type"] == "error" and "shutting down" in event["error"]["message"]
    assert "data: [DONE]" not in anthropic.lines

    assert "1 s drain timeout ended the drain: 3 requests still running were ended" in log


def test_streams_finish_within_the_drain_and_no_new_connection_is_accepted(tmp_path: Path) -> None:
    serve = start_serve(tmp_path, "--drain-timeout", "600", "--kv-cache-gib", "0.3")
    try:
        short = completion_stream(serve, max_tokens=24)
        long = completion_stream(serve, max_tokens=3000)
        short.wait_first()
        long.wait_first()

        serve.process.send_signal(signal.SIGTERM)
        wait_until(lambda: refuses_connections(serve), "the listener to close")
        short.wait_ended()
        assert not long.ended.is_set(), "the long stream ended before the second signal"
        serve.process.send_signal(signal.SIGTERM)  # a second signal ends the drain at once
        long.wait_ended()
        log = assert_clean_exit(serve)
    finally:
        serve.kill()

    assert short.error is None and short.lines[-1] == "data: [DONE]"
    chunks = short.data()
    assert not any("error" in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    error = shutdown_error(long)
    assert "a second signal" in str(error["message"])
    assert "a second signal ended the drain: 1 requests still running were ended" in log


def health_over(conn: socket.socket) -> bytes:
    """GET /health on an open HTTP/1.1 connection: the status line, or b"" when the server had closed it."""
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    reply = b""
    while b"\r\n\r\n" not in reply:
        try:
            chunk = conn.recv(4096)
        except ConnectionResetError:
            return b""
        if not chunk:
            return b""
        reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += conn.recv(4096)
    return head.split(b"\r\n", 1)[0]


def test_an_idle_connection_outlives_the_clients_expiry_and_shutdown_closes_it_at_once(
    tmp_path: Path,
) -> None:
    """httpx (under the openai, anthropic and fireworks SDKs) reuses a connection idle for up to 5 s. The server
    must keep it longer, or a request sent as the server closes it fails with "connection reset"."""
    serve = start_serve(tmp_path, "--kv-cache-gib", "0.3")
    try:
        address = urlsplit(serve.url)
        with socket.create_connection((address.hostname, address.port), timeout=HANG_GUARD_S) as conn:
            assert health_over(conn) == b"HTTP/1.1 200 OK"
            time.sleep(6.0)  # past httpx's 5 s expiry (uvicorn's default keep-alive was the same 5 s)
            assert health_over(conn) == b"HTTP/1.1 200 OK", "the server closed a connection idle for 6 s"
            started = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            assert conn.recv(1) == b"", "shutdown left the idle connection open"
            assert_clean_exit(serve)
            assert time.monotonic() - started < 30, "shutdown waited on the idle connection"
    finally:
        serve.kill()


def test_negative_drain_timeout_is_refused_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ember.cli", "serve", "--drain-timeout", "-1", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("ember serve: --drain-timeout must be")
