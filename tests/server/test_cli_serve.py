"""`ember serve` as a user runs it: the start-up log says what is served, and SIGTERM shuts down cleanly."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ember.bench.http_server import free_port, wait_until_healthy


def test_serve_logs_its_setup_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "ember.cli", "serve", "--port", str(port), "--threads", "1"]
    command += ["--kv-cache-gib", "0.1", "--data-dir", str(tmp_path / "data")]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_healthy(server, base, log, timeout_s=180)
            body = {"model": "SmolLM2-135M-Instruct", "prompt": "The capital of France is", "max_tokens": 4}
            reply = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
            assert reply.status_code == 200 and reply.json()["choices"][0]["text"]
            # the bundled embedding model is served beside the chat model
            embedded = httpx.post(
                f"{base}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "hello"}, timeout=60
            )
            assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384
            ranked = httpx.post(
                f"{base}/v1/rerank",
                json={
                    "query": "capital of France",
                    "documents": ["Bananas are yellow.", "Paris is in France."],
                },
                timeout=60,
            )
            assert ranked.status_code == 200 and ranked.json()["results"][0]["index"] == 1
            server.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises the signal to its default handler (exit by SIGTERM).
            assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        finally:
            if server.poll() is None:
                server.kill()
    text = log.read_text()
    assert "model SmolLM2-135M-Instruct" in text and "packed" in text and "threads" in text
    assert "embedding model all-MiniLM-L6-v2" in text and "384 dimensions, pooling mean, normalized" in text
    assert "KV cache" in text and f"serving on http://127.0.0.1:{port}/v1" in text
    assert "Application shutdown complete" in text and "Traceback" not in text


def test_a_model_file_that_cannot_load_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.gguf"  # 62 bytes declaring an array of 2^60 items
    key = b"general.tokens"
    bomb.write_bytes(
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<IIQ", 9, 4, 2**60)
    )
    done = subprocess.run(
        [sys.executable, "-m", "ember.cli", "serve", "--model", str(bomb), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"ember serve: cannot load the model: {bomb}: ")
    assert "declares 1152921504606846976 items" in done.stderr


def test_an_embedding_model_that_cannot_load_is_one_line_and_exit_1(tmp_path: Path) -> None:
    not_an_encoder = tmp_path / "llama"
    not_an_encoder.mkdir()
    (not_an_encoder / "config.json").write_text('{"model_type": "llama"}')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ember.cli",
            "serve",
            "--embedding-model",
            str(not_an_encoder),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ember serve: cannot load the embedding model: ") and "not an encoder" in last


def test_an_unknown_kernel_family_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before any model is read, so in-process: `ember serve` returns 2 with the choices named."""
    from ember.cli import main

    monkeypatch.setenv("EMBER_KERNEL_ISA", "avx9000")
    assert main(["serve", "--port", str(free_port())]) == 2
    assert (
        "EMBER_KERNEL_ISA='avx9000' is not one of auto, scalar, avx2, avx512_vnni" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--override-generation-config", '{"min_tokens": 2}'], "'min_tokens' is not one ember applies"),
        (["--override-generation-config", '{"top_p": 0}'], "top_p"),
        (["--generation-config", "/nonexistent"], "auto, vllm or a folder holding generation_config.json"),
    ],
)
def test_a_bad_generation_config_flag_is_one_line_and_exit_1(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before any model is read, so in-process."""
    from ember.cli import main

    assert main(["serve", "--port", str(free_port()), *flags]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ember serve: ") and message in error and "Traceback" not in error
