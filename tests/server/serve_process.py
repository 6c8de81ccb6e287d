"""`ember serve` as a real child process on a free loopback port, and clients that stream from it in threads:
what the shutdown tests signal, read and inspect."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ember.bench.http_server import free_port, wait_until_healthy

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
HANG_GUARD_S = 300.0  # generous: only a hung server or client ever waits this long


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    data_dir: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self) -> int:
        return self.process.wait(timeout=HANG_GUARD_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_serve(
    tmp_path: Path, *extra: str, name: str = "serve", data_dir: Path | None = None
) -> ServeProcess:
    """Starts `ember serve` (the default model unless `extra` has --model) and returns once /health is 200."""
    port = free_port()
    log = tmp_path / f"{name}.log"
    data_dir = data_dir or tmp_path / "data"
    command = [sys.executable, "-m", "ember.cli", "serve", "--port", str(port), "--threads", "1"]
    command += ["--data-dir", str(data_dir), *extra]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    serve = ServeProcess(process, f"http://127.0.0.1:{port}", log, data_dir)
    try:
        wait_until_healthy(process, serve.url, log, timeout_s=HANG_GUARD_S)
    except BaseException:
        serve.kill()
        raise
    return serve


@dataclass
class StreamClient:
    """One request in a thread: its status, and each non-empty SSE line (or the whole body) as it arrives.
    `first` is set once the first line is in (the request is generating), `ended` when the response ended."""

    url: str
    body: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    status: int | None = None
    error: BaseException | None = None
    first: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> StreamClient:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=HANG_GUARD_S) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.first.set()
        except BaseException as error:  # noqa: BLE001 - the test asserts on it
            self.error = error
        finally:
            self.first.set()
            self.ended.set()

    def wait_first(self) -> None:
        assert self.first.wait(HANG_GUARD_S), f"no first line from {self.url}"
        assert self.error is None, self.error
        assert self.status == 200, self.lines

    def wait_ended(self) -> None:
        assert self.ended.wait(HANG_GUARD_S), f"{self.url} did not end"

    def data(self) -> list[Any]:
        """The JSON of every `data:` line but [DONE]."""
        return [
            json.loads(line[6:])
            for line in self.lines
            if line.startswith("data: ") and line != "data: [DONE]"
        ]

    def text(self) -> str:
        """Generated text of an OpenAI completions or chat stream."""
        parts = []
        for chunk in self.data():
            for choice in chunk.get("choices", []):
                parts.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
        return "".join(parts)
