"""With API keys configured, every /v1 route needs one; health and metrics stay open."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from live_server import TINY_MODEL, RunningServer, start_server, tiny_engine

from ember.server.common.config import ServerConfig

KEY = "sk-ember-test-key-1"


@pytest.fixture(scope="module")
def keyed_server(caplog_module: list[str]) -> Iterator[RunningServer]:
    server = start_server(tiny_engine(), ServerConfig(model_name=TINY_MODEL, api_keys=("other-key", KEY)))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def caplog_module() -> Iterator[list[str]]:
    """Every log line of the module, to check that no key is ever written to the log."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(previous)


def test_requests_without_or_with_a_wrong_key_get_401(keyed_server: RunningServer) -> None:
    for prefix in ("/v1", "/inference/v1"):
        for headers in ({}, {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Basic {KEY}"}):
            response = httpx.get(f"{keyed_server.url}{prefix}/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed_server.openai_base, api_key="wrong", max_retries=0).models.list()


def test_the_right_key_opens_every_sdk(keyed_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=keyed_server.openai_base, api_key=KEY, max_retries=0)
    assert client.completions.create(model=TINY_MODEL, prompt="Hi", max_tokens=2).choices
    claude = anthropic.Anthropic(base_url=keyed_server.url, api_key=KEY, max_retries=0)
    assert claude.messages.create(
        model=TINY_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
    ).content
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=keyed_server.url, api_key="nope", max_retries=0).messages.count_tokens(
            model=TINY_MODEL, messages=[{"role": "user", "content": "Hi"}]
        )


def test_health_and_metrics_need_no_key(keyed_server: RunningServer) -> None:
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    assert httpx.get(f"{keyed_server.url}/metrics").status_code == 200


def test_keys_never_reach_the_log(keyed_server: RunningServer, caplog_module: list[str]) -> None:
    httpx.get(f"{keyed_server.url}/v1/models", headers={"Authorization": "Bearer leaked-guess-123"})
    assert caplog_module, "the start-up log line was not captured"
    assert not any(KEY in line or "leaked-guess-123" in line or "other-key" in line for line in caplog_module)
