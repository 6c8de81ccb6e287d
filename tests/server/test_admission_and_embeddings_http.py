"""#12 items 2 and 3 through HTTP, with the real openai SDK against a loopback server: requests refused at
every stage (grammar, adapter files, logit_bias, context, token ids, seed) and one failing inside a step leave
healthy streams byte-identical to a clean run and /metrics at 0 running, 0 waiting, 0 KV; embeddings over the
per-request token cap are a 400 naming it, and a client that leaves mid-embedding has it aborted and its KV
freed."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from live_server import MAX_MODEL_LEN, TINY_MODEL, RunningServer, start_server

from ember.engine.async_engine import AsyncEngine
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.lora.adapter import LoraAdapter, save_peft_adapter
from ember.lora.config import LoraConfig
from ember.lora.targets import module_shapes
from ember.models.loader import LoadedModel
from ember.server.common.config import ServerConfig

EMBEDDING_CAP = 3000
HEALTHY = ["The quick brown fox", "Once upon a time,", "1 2 3 4 5 6 7", "import numpy as np\n", "Dear diary"]


def write_adapter(model: LoadedModel, path: Path, seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    out_features, in_features = module_shapes(model.config)["q_proj"]
    weights = {
        (layer, "q_proj"): (
            torch.randn(2, in_features, generator=gen),
            torch.randn(out_features, 2, generator=gen),
        )
        for layer in range(model.config.num_layers)
    }
    save_peft_adapter(LoraAdapter(path.name, 2, 4.0, ("q_proj",), weights), str(path), model.name)
    return str(path)


class PoisonedForward:
    """The runner's forward, raising whenever a batch contains `poison` (one request's fault inside a step)."""

    def __init__(self, forward: Callable[..., object], poison: int) -> None:
        self.forward = forward
        self.poison = poison

    def __call__(self, input_ids: torch.Tensor, *args: object, **kwargs: object) -> object:
        if bool((input_ids == self.poison).any()):
            raise RuntimeError("simulated kernel fault on a poisoned input")
        return self.forward(input_ids, *args, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One adapter in memory: "broken" is evicted by "other" at start-up, then its weights file is spoiled, so a
    request for it reloads the folder and that load fails."""
    model = tiny_loaded_model()
    folder = tmp_path_factory.mktemp("adapters")
    adapters = (
        ("broken", write_adapter(model, folder / "broken", 1)),
        ("other", write_adapter(model, folder / "other", 2)),
    )
    config = tiny_engine_config(max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=32)
    config = dataclasses.replace(config, lora=LoraConfig(max_loaded=1, adapters=adapters))
    running = start_server(
        AsyncEngine.from_loaded(model, config),
        ServerConfig(model_name=TINY_MODEL, max_embedding_tokens=EMBEDDING_CAP),
    )
    (folder / "broken" / "adapter_model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    yield running
    running.stop()


def client_for(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120  # a hang guard only
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def stream_text(client: openai.OpenAI, prompt: str) -> str:
    chunks = client.completions.create(
        model=TINY_MODEL,
        prompt=prompt,
        max_tokens=24,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    return "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)


def healthy_run(server: RunningServer, during: Callable[[], None]) -> list[str]:
    """The healthy streams queued together while the engine is held, so they share their steps; `during` runs
    after 3 steps, with the engine held again."""
    engine = server.engine
    client = client_for(server)
    with concurrent.futures.ThreadPoolExecutor(len(HEALTHY)) as pool:
        engine.pause()
        try:
            futures = [pool.submit(stream_text, client, prompt) for prompt in HEALTHY]
            wait_for(lambda: engine.stats().num_waiting == len(HEALTHY), "the streams queued")
            engine.resume(steps=3)
            engine.pause()
            during()
        finally:
            engine.resume()
        return [f.result() for f in futures]


def metrics(server: RunningServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=60).text
    values = {}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
        assert found, name
        values[name] = float(found.group(1))
    return values


def idle(server: RunningServer) -> bool:
    engine = server.engine.engine
    block_manager = engine.scheduler.block_manager
    return not engine.has_unfinished() and block_manager.num_free_blocks == block_manager.num_usable_blocks


def test_refusals_at_every_stage_leave_healthy_streams_and_metrics_clean(server: RunningServer) -> None:
    clean = healthy_run(server, lambda: None)
    engine = server.engine.engine
    used = {t for text in HEALTHY + clean for t in engine.tokenizer.encode(text)}
    poison = next(t for t in range(1000, engine.model.config.vocab_size) if t not in used)
    engine.runner.forward = PoisonedForward(engine.runner.forward, poison)  # type: ignore[assignment]
    ref_chain = {"$defs": {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(5000)}, "$ref": "#/$defs/d0"}
    ref_chain["$defs"]["d5000"] = {"type": "string"}
    base = {"model": TINY_MODEL, "prompt": "Tell me", "max_tokens": 4}
    vocab = engine.model.config.vocab_size
    choices = [f"c{i}" for i in range(66_000)]
    # (body, what the 400 must say); completions take response_format as Fireworks' extension (extra_body)
    refused = [
        (
            {**base, "extra_body": {"response_format": {"type": "choice", "choices": choices}}},
            "number of choices",
        ),
        (
            {
                **base,
                "extra_body": {
                    "response_format": {"type": "json_schema", "json_schema": {"schema": ref_chain}}
                },
            },
            "$ref chain",
        ),
        (
            {**base, "model": "broken"},
            "broken",
        ),  # its folder's weights are junk now: the reload fails at admission
        ({**base, "logit_bias": {str(vocab + 3): 5}}, "outside the vocabulary"),
        ({**base, "prompt": [5] * MAX_MODEL_LEN}, "context length"),
        ({**base, "prompt": [1, vocab, 2]}, "outside the vocabulary"),
        ({**base, "seed": 2**64}, "seed"),
    ]
    client = client_for(server)
    outcomes: dict[str, object] = {}

    def during() -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            poisoned = pool.submit(
                client.completions.create, model=TINY_MODEL, prompt=[5, poison, 6], max_tokens=4
            )
            edge_seed = pool.submit(
                client.completions.create, model=TINY_MODEL, prompt="Seeded", max_tokens=4, seed=2**64 - 1
            )
            for body, says in refused * 3:
                with pytest.raises(openai.BadRequestError) as caught:
                    client.completions.create(**body)  # type: ignore[call-overload]
                assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
                assert says in caught.value.message
                assert "Traceback" not in caught.value.message and "panicked" not in caught.value.message
            server.engine.resume(steps=4)  # the poisoned request and the seeded one get their steps
            with pytest.raises(openai.InternalServerError) as failed:
                poisoned.result()
            outcomes["poisoned"] = failed.value.message
            outcomes["seeded"] = edge_seed.result().choices[0].finish_reason
            server.engine.pause()

    hammered = healthy_run(server, during)
    assert hammered == clean, "the healthy streams differ from the clean run"
    assert "poisoned input" in str(outcomes["poisoned"])
    assert outcomes["seeded"] == "length"
    wait_for(lambda: idle(server), "the engine to be idle")
    assert metrics(server) == {
        "vllm:num_requests_running": 0.0,
        "vllm:num_requests_waiting": 0.0,
        "vllm:kv_cache_usage_perc": 0.0,
    }
    engine.check_invariants()
    assert httpx.get(f"{server.url}/health", timeout=60).status_code == 200


def test_embeddings_over_the_token_cap_are_a_400_naming_it(server: RunningServer) -> None:
    client = client_for(server)
    prompt_tokens = server.engine.stats().prompt_tokens_total
    many = [[7] * 200 for _ in range(EMBEDDING_CAP // 200 + 1)]  # each input fits; together they do not
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=TINY_MODEL, input=many)
    error = caught.value.body
    assert error["param"] == "input"  # type: ignore[index]
    assert (
        f"limit of {EMBEDDING_CAP} tokens" in error["message"] and "max_embedding_tokens" in error["message"]
    )  # type: ignore[index]
    assert server.engine.stats().prompt_tokens_total == prompt_tokens, "nothing reached the engine"
    # at the cap exactly, the same many inputs are served
    at_cap = [[7] * 200 for _ in range(EMBEDDING_CAP // 200)]
    result = client.embeddings.create(model=TINY_MODEL, input=at_cap)
    assert len(result.data) == len(at_cap) and result.usage.prompt_tokens == 200 * len(at_cap)
    wait_for(lambda: idle(server), "the engine to be idle")


def test_a_client_leaving_aborts_its_embedding_and_frees_its_kv(server: RunningServer) -> None:
    engine = server.engine
    inner = engine.engine
    block_manager = inner.scheduler.block_manager
    body = json.dumps({"model": TINY_MODEL, "input": [[9] * 250 for _ in range(10)]}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    engine.pause()
    try:
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(lambda: len(inner.embeddings) == 1, "the embedding to reach the engine")
        engine.resume(steps=3)
        engine.pause()
        assert len(inner.embeddings) == 1 and block_manager.num_free_blocks < block_manager.num_usable_blocks
        steps = engine.stats().num_steps
        sock.close()  # the client leaves; the engine stays held: the abort needs no step
        wait_for(lambda: idle(server), "the embedding to be aborted")
        assert engine.stats().num_steps == steps
    finally:
        engine.resume()
    assert metrics(server)["vllm:kv_cache_usage_perc"] == 0.0
    inner.check_invariants()
