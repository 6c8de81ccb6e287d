"""`ember serve` in a child process on a free loopback port, for the benchmark's "through HTTP" column.

A separate process, not a thread: the client then shares no GIL with the server, as in any real deployment,
and what is measured is exactly the command users run (uvicorn, logging, the engine thread) with the same
engine settings as the engine-only rows."""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ember.bench.http_client import HttpBenchError
from ember.engine.llm_engine import EngineConfig


@dataclass(frozen=True)
class ServerLaunch:
    """The `ember serve` command line that reproduces one engine configuration."""

    model: str | None
    weight_format: str
    quantization: str | None
    threads: int
    block_size: int
    enable_prefix_caching: bool
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    kv_cache_gib: float
    start_timeout_s: float = 300.0
    kv_cache_dtype: str = "auto"

    @classmethod
    def matching(
        cls,
        engine: EngineConfig,
        model: str | None,
        weight_format: str,
        quantization: str | None,
        threads: int,
    ) -> ServerLaunch:
        if engine.cache.num_blocks:
            raise ValueError("`ember serve` sizes its KV cache in GiB; pass kv_cache_gib, not num_blocks")
        if engine.adapt_threads:
            raise ValueError("the benchmark pins its thread count; adapt_threads must be 0")
        return cls(
            model=model,
            weight_format=weight_format,
            quantization=quantization,
            threads=threads,
            block_size=engine.cache.block_size,
            enable_prefix_caching=engine.cache.enable_prefix_caching,
            max_num_seqs=engine.scheduler.max_num_seqs,
            max_num_batched_tokens=engine.scheduler.max_num_batched_tokens,
            max_model_len=engine.scheduler.max_model_len,
            kv_cache_gib=engine.kv_cache_gib,
            kv_cache_dtype=engine.cache.kv_cache_dtype,
        )

    def command(self, port: int, api_key: str) -> list[str]:
        command = [sys.executable, "-m", "ember.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        # "=" keeps a key that starts with "-" (token_urlsafe draws one in 32) from reading as an option.
        command += [f"--api-key={api_key}", "--no-fine-tuning", "--threads", str(self.threads)]
        command += ["--weight-format", self.weight_format, "--block-size", str(self.block_size)]
        command += ["--max-num-seqs", str(self.max_num_seqs)]
        command += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        command += ["--max-model-len", str(self.max_model_len), "--kv-cache-gib", str(self.kv_cache_gib)]
        command += ["--kv-cache-dtype", self.kv_cache_dtype]
        if not self.enable_prefix_caching:
            command.append("--no-prefix-caching")
        if self.model is not None:
            command += ["--model", self.model]
        if self.quantization is not None:
            command += ["--quantization", self.quantization]
        return command


@dataclass(frozen=True)
class BenchServer:
    url: str  # http://127.0.0.1:<port>
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:]) or "(no output)"


def wait_until_healthy(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float) -> None:
    """Returns once `ember serve` at `url` answers /health with 200; HttpBenchError with the end of its log
    when the process exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise HttpBenchError(
                f"the server exited with code {code} before it was ready; its log ends with:\n"
                + _log_tail(log_path)
            )
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise HttpBenchError(
                f"the server was not healthy after {timeout_s:.0f} s; its log ends with:\n"
                + _log_tail(log_path)
            )
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # graceful: uvicorn closes connections, the engine thread stops
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_server(launch: ServerLaunch) -> Iterator[BenchServer]:
    """Starts `ember serve`, yields once /health answers 200, and always stops the process on exit."""
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as folder:
        log_path = Path(folder) / "serve.log"
        port = free_port()
        api_key = secrets.token_urlsafe(16)  # ours, so the server's EMBER_API_KEYS cannot lock the client out
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                launch.command(port, api_key), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        server = BenchServer(f"http://127.0.0.1:{port}", api_key, process, log_path)
        try:
            wait_until_healthy(process, server.url, log_path, launch.start_timeout_s)
            yield server
        finally:
            _stop(process)
