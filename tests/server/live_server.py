"""A real uvicorn server on a free loopback port, in a background thread, serving a real AsyncEngine."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from ember.engine.async_engine import AsyncEngine
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.serve_command import HTTP_KEEP_ALIVE_S
from ember.server.app import build_app
from ember.server.common.config import ServerConfig

TINY_MODEL = "tiny-llama"
TINY_MODEL_ID = f"accounts/fireworks/models/{TINY_MODEL}"
MAX_MODEL_LEN = 256


@dataclass
class RunningServer:
    engine: AsyncEngine
    config: ServerConfig
    url: str  # http://127.0.0.1:<port>
    _server: uvicorn.Server
    _thread: threading.Thread

    @property
    def openai_base(self) -> str:
        return f"{self.url}/inference/v1"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def serve_in_thread(app: FastAPI, **uvicorn_options: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Runs `app` under uvicorn on a free loopback port; returns once it accepts connections. With
    `ssl_certfile` / `ssl_keyfile` among `uvicorn_options` it serves https."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {"timeout_keep_alive": HTTP_KEEP_ALIVE_S, **uvicorn_options}  # as `ember serve`
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    scheme = "https" if uvicorn_options.get("ssl_certfile") else "http"
    return server, thread, f"{scheme}://127.0.0.1:{port}"


def start_server(engine: AsyncEngine, config: ServerConfig) -> RunningServer:
    server, thread, url = serve_in_thread(build_app(engine, config))
    return RunningServer(engine, config, url, server, thread)


def tiny_engine(**scheduler: object) -> AsyncEngine:
    config = tiny_engine_config(max_model_len=MAX_MODEL_LEN, **scheduler)
    return AsyncEngine.from_loaded(tiny_loaded_model(), config)
