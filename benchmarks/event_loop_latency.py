"""How long GET /health takes while the audit's bad inputs (issue #12) are replayed: is the event loop free?

Run: `python benchmarks/event_loop_latency.py [--seconds 15]`.

A server on a tiny random model (with the default model's real tokenizer and chat template) runs in a child
process on loopback, so the client's own work never shares the server's interpreter. /health is polled every
`--poll-interval` seconds, first idle, then while four client threads replay, each in a loop:
- a chat with a 100k-option `response_format: {"type": "choice"}`,
- a completion with a ~1M-token prompt,
- a ~1M-token POST /v1/tokenize,
- a chat of 100k messages.
Each is refused (limits, context length) or answered; the point is the work done before that. Prints p50 / p99 /
max of /health per phase, and what the bad inputs got back.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

MODEL = "tiny-llama"
MAX_BODY_BYTES = 16 * 1024 * 1024  # room for the 1M-token bodies; the audit's server allowed them too


def _serve(port: int) -> None:
    import uvicorn

    from ember.engine.async_engine import AsyncEngine
    from ember.engine.testing import tiny_engine_config, tiny_loaded_model
    from ember.interpreter_tuning import tune_interpreter_for_serving
    from ember.server.app import build_app
    from ember.server.common.config import ServerConfig

    engine = AsyncEngine.from_loaded(tiny_loaded_model(), tiny_engine_config(max_model_len=1024))
    app = build_app(engine, ServerConfig(model_name=MODEL, max_body_bytes=MAX_BODY_BYTES))
    tune_interpreter_for_serving()  # as `ember serve` does once loaded
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bad_inputs() -> dict[str, tuple[str, bytes]]:
    """name -> (path, JSON body), encoded once so the replay threads only send bytes."""
    user = [{"role": "user", "content": "Pick one."}]
    choices = [f"option {i}" for i in range(100_000)]
    long_text = "hello " * 1_000_000  # about one token per word
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(100_000)]
    bodies = {
        "100k choices": (
            "/v1/chat/completions",
            {"messages": user, "max_tokens": 4, "response_format": {"type": "choice", "choices": choices}},
        ),
        "1M-token prompt": ("/v1/completions", {"prompt": long_text, "max_tokens": 4}),
        "1M-token tokenize": ("/v1/tokenize", {"prompt": long_text}),
        "100k messages": ("/v1/chat/completions", {"messages": many, "max_tokens": 4}),
    }
    return {
        name: (path, json.dumps({"model": MODEL, **body}).encode()) for name, (path, body) in bodies.items()
    }


def poll_health(url: str, seconds: float, interval: float) -> list[float]:
    """Latencies of GET /health in ms, one request every `interval` s for `seconds` s."""
    latencies: list[float] = []
    with httpx.Client(timeout=120) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            client.get(f"{url}/health").raise_for_status()
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(interval)
    return latencies


def replay(
    url: str, path: str, body: bytes, stop: threading.Event, record: Callable[[int, float], None]
) -> None:
    with httpx.Client(timeout=600) as client:
        while not stop.is_set():
            start = time.perf_counter()
            status = client.post(f"{url}{path}", content=body, headers={"content-type": "application/json"})
            record(status.status_code, time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--poll-interval", type=float, default=0.02)
    parser.add_argument("--only", action="append", help="replay only this bad input (repeatable)")
    args = parser.parse_args()
    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not server.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.2)
    try:
        inputs = {name: body for name, body in bad_inputs().items() if not args.only or name in args.only}
        idle = poll_health(url, args.seconds, args.poll_interval)
        stop = threading.Event()
        outcomes: dict[str, list[tuple[int, float]]] = {name: [] for name in inputs}
        threads = [
            threading.Thread(
                target=replay,
                args=(
                    url,
                    path,
                    body,
                    stop,
                    lambda status, took, name=name: outcomes[name].append((status, took)),
                ),
                daemon=True,
            )
            for name, (path, body) in inputs.items()
        ]
        for thread in threads:
            thread.start()
        busy = poll_health(url, args.seconds, args.poll_interval)
        stop.set()
        for thread in threads:
            thread.join(timeout=600)
    finally:
        server.terminate()
        server.join(timeout=30)
    print(f"{'/health':24} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (("idle", idle), ("bad inputs replayed", busy)):
        print(
            f"{name:24} {len(values):8d} {statistics.median(values):8.1f} "
            f"{percentile(values, 0.99):8.1f} {max(values):8.1f}"
        )
    print()
    print(f"{'bad input':24} {'sent':>8} {'mean s':>8}  statuses")
    for name, results in outcomes.items():
        statuses = Counter(status for status, _ in results)
        mean = statistics.mean(took for _, took in results) if results else float("nan")
        print(f"{name:24} {len(results):8d} {mean:8.2f}  {dict(statuses)}")


if __name__ == "__main__":
    main()
