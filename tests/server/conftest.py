"""Fixtures of the server tests: one live server on a tiny random model, shared by the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from live_server import TINY_MODEL, RunningServer, start_server, tiny_engine

from ember.server.common.config import ServerConfig


@pytest.fixture(scope="session")
def tiny_server() -> Iterator[RunningServer]:
    server = start_server(
        tiny_engine(), ServerConfig(model_name=TINY_MODEL, aliases=("tiny",), max_body_bytes=1_000_000)
    )
    yield server
    server.stop()
