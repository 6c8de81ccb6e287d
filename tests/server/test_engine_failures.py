"""An internal failure in an engine step is a 500 for the requests it ran; the server keeps serving.
A dead engine makes /health say 503."""

from __future__ import annotations

import asyncio

import httpx
from live_server import TINY_MODEL, start_server, tiny_engine

from ember.server.common.config import ServerConfig


class FailOnce:
    """Wraps the runner's execute so its next call raises, as a bug in a kernel would."""

    def __init__(self, execute: object) -> None:
        self.execute = execute
        self.armed = True

    def __call__(self, *args: object, **kwargs: object) -> object:
        if self.armed:
            self.armed = False
            raise RuntimeError("simulated kernel fault")
        return self.execute(*args, **kwargs)  # type: ignore[operator]


def test_a_failing_step_is_a_500_and_the_next_request_succeeds() -> None:
    engine = tiny_engine()
    server = start_server(engine, ServerConfig(model_name=TINY_MODEL))
    try:
        runner = engine.engine.runner
        runner.execute = FailOnce(runner.execute)  # type: ignore[method-assign]
        body = {"model": TINY_MODEL, "prompt": "Hello", "max_tokens": 4}
        failed = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert failed.status_code == 500
        # the step fails the request it ran (and only that one: LLMEngine.step), which answers with its error
        error = failed.json()["error"]
        assert (
            error["code"] == "generation_failed" and "internal error in the engine step" in error["message"]
        )
        ok = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"
        bm = engine.engine.scheduler.block_manager
        assert bm.num_free_blocks == engine.engine.num_blocks - 1
        assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        server.stop()


def test_health_is_503_when_the_engine_has_stopped() -> None:
    engine = tiny_engine()
    server = start_server(engine, ServerConfig(model_name=TINY_MODEL))
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
        asyncio.run(engine.shutdown())
        response = httpx.get(f"{server.url}/health")
        assert response.status_code == 503 and response.json()["status"] == "engine_unavailable"
    finally:
        server.stop()
