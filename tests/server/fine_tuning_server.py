"""A live server with the fine-tuning API on: a tiny random Llama written to disk (the training worker loads it
from there), a data directory, and uvicorn on a free loopback port."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from live_server import serve_in_thread

from ember.engine.async_engine import AsyncEngine
from ember.engine.testing import tiny_engine_config, write_tiny_hf_folder
from ember.models.loader import LoadConfig, load_model
from ember.server.app import build_app
from ember.server.common.config import FineTuningConfig, ServerConfig

TINY_MODEL = "tiny-llama"
ACCOUNT = "fireworks"


def write_tiny_model(folder: Path) -> Path:
    return write_tiny_hf_folder(
        folder, max_position_embeddings=2048
    )  # the jobs API trains 2048-token contexts


@dataclass
class TuningServer:
    engine: AsyncEngine
    url: str  # http://127.0.0.1:<port>
    data_dir: Path
    _server: uvicorn.Server
    _thread: threading.Thread

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        """Stops uvicorn; the lifespan stops the job runner and its worker (a running job resumes later)."""
        self._server.should_exit = True
        self._thread.join(timeout=60)


def start_tuning_server(
    model_dir: Path,
    data_dir: Path,
    *,
    max_upload_bytes: int = 200_000,
    max_body_bytes: int = 20_000,
    max_model_len: int = 256,
    engine_config: Any = None,
    uvicorn_options: dict[str, Any] | None = None,
    **server_options: Any,
) -> TuningServer:
    """`server_options` are more ServerConfig fields (API keys, adapter folders, allowed origins ...);
    `uvicorn_options` go to uvicorn (ssl_certfile and ssl_keyfile serve https)."""
    loaded = load_model(LoadConfig(str(model_dir), "fp32"))
    engine = AsyncEngine.from_loaded(loaded, engine_config or tiny_engine_config(max_model_len=max_model_len))
    config = ServerConfig(
        model_name=TINY_MODEL, account=ACCOUNT, max_body_bytes=max_body_bytes, **server_options
    )
    fine_tuning = FineTuningConfig(
        data_dir=data_dir, max_upload_bytes=max_upload_bytes, worker_threads=1, poll_interval_s=0.1
    )
    server, thread, url = serve_in_thread(build_app(engine, config, fine_tuning), **(uvicorn_options or {}))
    return TuningServer(engine, url, data_dir, server, thread)


def chat_row(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def jsonl(rows: list[Any]) -> bytes:
    """Rows as JSONL bytes; str rows are written as the raw line."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def as_file(rows: list[Any], name: str = "train.jsonl") -> tuple[str, io.BytesIO]:
    return name, io.BytesIO(jsonl(rows))


def wait_for(condition: Callable[[], bool], timeout_s: float = 240.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
