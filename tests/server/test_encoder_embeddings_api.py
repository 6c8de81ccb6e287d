"""/v1/embeddings with an embedding model beside the chat model, through the OpenAI SDK: routed by name (the
encoder's vectors equal the model's own, the chat model keeps its mean-pooled path), an omitted model is the
encoder, /v1/models lists it, and bad input is a 400 naming the parameter."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from encoder_server import EMBEDDING_CAP, ENCODER, ENCODER_ID, bundled_encoder, running_encoder_server
from live_server import TINY_MODEL, RunningServer, serve_in_thread, tiny_engine

from ember.models.encoder.encoder_model import EncoderModel
from ember.models.errors import ModelLoadError
from ember.serve_command import load_embedding_model
from ember.server.app import build_app
from ember.server.common.config import ServerConfig

TEXTS = ["A man is eating food.", "Embeddings turn text into vectors.", "x"]


@pytest.fixture(scope="module")
def encoder_server() -> Iterator[RunningServer]:
    yield from running_encoder_server()


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_embedding_model_beside_the_chat_model(encoder_server: RunningServer) -> None:
    models = {m.id: m for m in client(encoder_server).models.list().data}
    assert f"accounts/fireworks/models/{TINY_MODEL}" in models and ENCODER_ID in models
    card = client(encoder_server).models.retrieve(ENCODER).model_dump()
    assert card["id"] == ENCODER_ID and card["context_length"] == 256 and card["task"] == "embed"
    assert "sentence-transformers/all-MiniLM-L6-v2" in card["aliases"]


@pytest.mark.parametrize("name", [ENCODER, ENCODER_ID, "sentence-transformers/all-MiniLM-L6-v2"])
def test_the_encoder_serves_its_own_vectors_under_each_name(encoder_server: RunningServer, name: str) -> None:
    result = client(encoder_server).embeddings.create(model=name, input=TEXTS)  # the SDK asks for base64
    got = torch.tensor([d.embedding for d in result.data])
    model = bundled_encoder()
    expected = torch.tensor(model.embed([model.encode(t) for t in TEXTS]))
    assert result.model == name and got.shape == (3, 384)
    assert torch.nn.functional.cosine_similarity(got, expected).min().item() >= 0.99999
    assert result.usage.prompt_tokens == sum(len(model.encode(t)) for t in TEXTS)


def test_an_omitted_model_is_the_encoder_and_the_chat_model_keeps_its_path(
    encoder_server: RunningServer,
) -> None:
    omitted = httpx.post(f"{encoder_server.url}/v1/embeddings", json={"input": "hello"}, timeout=60).json()
    assert omitted["model"] == ENCODER_ID and len(omitted["data"][0]["embedding"]) == 384
    chat = client(encoder_server).embeddings.create(model=TINY_MODEL, input="hello")
    assert len(chat.data[0].embedding) == encoder_server.engine.model_config.hidden_size


def test_dimensions_and_token_id_inputs(encoder_server: RunningServer) -> None:
    short = client(encoder_server).embeddings.create(model=ENCODER, input="hello world", dimensions=64)
    vector = torch.tensor(short.data[0].embedding)
    assert vector.shape == (64,) and vector.norm().item() == pytest.approx(1.0, abs=1e-5)
    ids = bundled_encoder().encode("hello world")
    by_ids = client(encoder_server).embeddings.create(model=ENCODER, input=[ids])
    by_text = client(encoder_server).embeddings.create(model=ENCODER, input="hello world")
    assert by_ids.data[0].embedding == pytest.approx(by_text.data[0].embedding, abs=1e-6)


def _error(server: RunningServer, body: dict) -> dict:
    reply = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    return reply.json()["error"]


def test_bad_inputs_are_400s_naming_the_parameter(encoder_server: RunningServer) -> None:
    too_long = _error(encoder_server, {"model": ENCODER, "input": ["fine", "word " * 300]})
    assert too_long["param"] == "input[1]" and too_long["code"] == "context_length_exceeded"
    assert "at most 256 tokens" in too_long["message"]
    huge = _error(encoder_server, {"model": ENCODER, "input": "word " * 200_000})  # 1 MB: refused by its head
    assert (
        huge["param"] == "input"
        and huge["code"] == "context_length_exceeded"
        and "more than" in huge["message"]
    )
    over_cap = _error(encoder_server, {"model": ENCODER, "input": ["word " * 200] * 12})
    assert over_cap["param"] == "input" and f"limit of {EMBEDDING_CAP} tokens" in over_cap["message"]
    bad_id = _error(encoder_server, {"model": ENCODER, "input": [[101, 30522, 102]]})
    assert bad_id["param"] == "input" and "outside the vocabulary" in bad_id["message"]
    assert _error(encoder_server, {"model": ENCODER, "input": ""})["param"] == "input"
    assert (
        _error(encoder_server, {"model": ENCODER, "input": "a", "dimensions": 385})["param"] == "dimensions"
    )
    chat = httpx.post(
        f"{encoder_server.url}/v1/chat/completions",
        json={"model": ENCODER, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert chat.status_code == 400 and "embedding model" in chat.json()["error"]["message"]
    assert httpx.get(f"{encoder_server.url}/health", timeout=10).status_code == 200


def test_the_embedding_model_flag(tmp_path: Path) -> None:
    assert load_embedding_model("none") is None and load_embedding_model("NONE") is None
    assert load_embedding_model(None).name == ENCODER  # the bundled one
    with pytest.raises(ModelLoadError, match="Hugging Face folder"):
        load_embedding_model(str(tmp_path / "missing"))


def test_concurrent_requests_beside_a_stream_each_get_their_own_vectors(
    encoder_server: RunningServer,
) -> None:
    model = bundled_encoder()
    batches = [[f"request {r} text {i} " * (1 + 7 * i) for i in range(5)] for r in range(4)]

    async def embed(client: httpx.AsyncClient, texts: list[str]) -> list[list[float]]:
        reply = await client.post("/v1/embeddings", json={"model": ENCODER, "input": texts}, timeout=120)
        assert reply.status_code == 200, reply.text
        return [d["embedding"] for d in reply.json()["data"]]

    async def stream(client: httpx.AsyncClient) -> int:
        body = {"model": TINY_MODEL, "prompt": "hello", "max_tokens": 64, "stream": True, "ignore_eos": True}
        chunks = 0
        async with client.stream("POST", "/v1/completions", json=body, timeout=120) as reply:
            async for line in reply.aiter_lines():
                chunks += line.startswith("data: {")
        return chunks

    async def run() -> tuple[int, list[list[list[float]]]]:
        async with httpx.AsyncClient(base_url=encoder_server.url) as client:
            streamed, *vectors = await asyncio.gather(stream(client), *(embed(client, b) for b in batches))
        return streamed, vectors

    streamed, vectors = asyncio.run(run())
    assert streamed > 0
    for texts, got in zip(batches, vectors, strict=True):
        expected = torch.tensor(model.embed([model.encode(t) for t in texts]))
        assert torch.nn.functional.cosine_similarity(torch.tensor(got), expected).min().item() >= 0.99999


class GatedEncoder(EncoderModel):
    """The real MiniLM, whose first batch waits for the test's go (on the engine thread) and which counts
    batches: a client can then leave while its embedding is surely in flight."""

    started: threading.Event
    go: threading.Event
    batches: int

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        self.batches += 1
        self.started.set()
        self.go.wait(timeout=60)
        return super().embed(inputs)


def test_a_client_leaving_mid_embedding_stops_it_and_the_engine_keeps_serving() -> None:
    base = bundled_encoder()
    gated = GatedEncoder(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    gated.started, gated.go, gated.batches = threading.Event(), threading.Event(), 0
    engine = tiny_engine()
    server, thread, url = serve_in_thread(build_app(engine, ServerConfig(model_name=TINY_MODEL), None, gated))
    try:
        body = json.dumps({"model": ENCODER, "input": ["word " * 250] * 32}).encode()  # 8 batches of 4 inputs
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert gated.started.wait(timeout=60)  # the first batch holds the engine thread
        time.sleep(1.0)  # time for the server to see the client go; the assertions hold either way but one
        gated.go.set()
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": ENCODER, "input": "still here"}, timeout=60)
        assert reply.status_code == 200 and engine.is_running
        assert (
            gated.batches == 2
        )  # the left request's first batch, then this one's: its other seven never ran
        chat = httpx.post(
            f"{url}/v1/completions", json={"model": TINY_MODEL, "prompt": "hi", "max_tokens": 2}
        )
        assert chat.status_code == 200
    finally:
        gated.go.set()
        server.should_exit = True
        thread.join(timeout=30)
