"""Serving existing PEFT adapter folders as models: POST/GET/DELETE /v1/adapters with clear 400s for adapters that
do not fit, `ember serve --lora name=path` (an engine configured with adapters), requests routed by every name an
adapter answers to, and a batch mixing base and adapter requests giving what each gives alone."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from adapter_files import write_adapter
from fine_tuning_server import ACCOUNT, TINY_MODEL, TuningServer, start_tuning_server, write_tiny_model

from ember.cli import build_parser
from ember.engine.testing import tiny_config, tiny_engine_config
from ember.lora.config import LoraConfig
from ember.serve_command import lora_adapters_from

pytestmark = pytest.mark.timeout(120)

BASE_ID = f"accounts/{ACCOUNT}/models/{TINY_MODEL}"
PROMPTS = ["Tell me a story.", "What is the capital of France?", "Count to five."]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    write_tiny_model(root / TINY_MODEL)
    config = tiny_config("llama", max_position_embeddings=2048)
    for seed, name in enumerate(("alpha", "beta", "startup"), start=1):
        write_adapter(root / name, config, seed)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[TuningServer]:
    # The engine is configured with one adapter, as `ember serve --lora startup=<folder>` does.
    args = build_parser().parse_args(["serve", "--lora", f"startup={root / 'startup'}"])
    engine_config = dataclasses.replace(
        tiny_engine_config(max_model_len=256), lora=LoraConfig(adapters=lora_adapters_from(args.lora))
    )
    running = start_tuning_server(
        root / TINY_MODEL, root / "data", engine_config=engine_config, adapter_dirs=(root,)
    )
    yield running
    running.stop()


def chat(server: TuningServer, model: str, prompt: str = PROMPTS[0]) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0,
    }
    return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60)


def greedy(server: TuningServer, model: str, prompt: str = PROMPTS[0]) -> list[int]:
    body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 1}
    response = httpx.post(f"{server.v1}/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["logprobs"]["tokens"]


def test_lora_flag_adapter_is_served_from_start(server: TuningServer) -> None:
    cards = {m["id"]: m for m in httpx.get(f"{server.v1}/models").json()["data"]}
    assert cards[f"accounts/{ACCOUNT}/models/startup"]["parent"] == BASE_ID
    assert "startup" in cards[f"accounts/{ACCOUNT}/models/startup"]["aliases"]
    assert greedy(server, "startup") != greedy(server, TINY_MODEL)
    with pytest.raises(ValueError, match="NAME=PATH"):
        lora_adapters_from(["no-equals-sign"])


def test_load_serve_and_unload_an_adapter(server: TuningServer, root: Path) -> None:
    loaded = httpx.post(f"{server.v1}/adapters", json={"name": "alpha", "path": str(root / "alpha")})
    assert loaded.status_code == 200, loaded.text
    adapter = loaded.json()
    assert adapter["id"] == f"accounts/{ACCOUNT}/models/alpha" and adapter["rank"] == 4
    assert adapter["target_modules"] == ["q_proj", "v_proj", "down_proj"]
    assert [a["name"] for a in httpx.get(f"{server.v1}/adapters").json()["data"]] == ["alpha", "startup"]
    assert httpx.get(f"{server.v1}/models/accounts/{ACCOUNT}/models/alpha").json()["parent"] == BASE_ID

    by_name, by_id = greedy(server, "alpha"), greedy(server, f"accounts/{ACCOUNT}/models/alpha")
    assert by_name == by_id != greedy(server, TINY_MODEL)
    response = chat(server, f"accounts/{ACCOUNT}/models/alpha")
    assert response.status_code == 200 and response.json()["model"] == f"accounts/{ACCOUNT}/models/alpha"

    taken = httpx.post(f"{server.v1}/adapters", json={"name": "alpha", "path": str(root / "beta")})
    assert taken.status_code == 409
    assert httpx.delete(f"{server.v1}/adapters/alpha").json()["deleted"] is True
    gone = chat(server, "alpha")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert httpx.delete(f"{server.v1}/adapters/alpha").status_code == 404


def test_adapters_that_do_not_fit_are_clear_400s(server: TuningServer, root: Path) -> None:
    bad = root / "bad"  # inside the server's --adapter-dir
    config = tiny_config("llama", max_position_embeddings=2048)
    wrong_shape = write_adapter(bad / "wide", tiny_config("llama", hidden_size=2 * config.hidden_size), 5)
    other_base = write_adapter(bad / "other", config, 6, base_model="meta-llama/Llama-3.1-70B")
    bad_rank = write_adapter(bad / "rank", config, 7)
    settings = json.loads((bad_rank / "adapter_config.json").read_text())
    (bad_rank / "adapter_config.json").write_text(json.dumps({**settings, "r": 16}))
    bad_modules = write_adapter(bad / "modules", config, 8)
    settings = json.loads((bad_modules / "adapter_config.json").read_text())
    (bad_modules / "adapter_config.json").write_text(json.dumps({**settings, "target_modules": ["q_proj"]}))
    unknown_module = write_adapter(bad / "unknown", config, 9)
    (unknown_module / "adapter_config.json").write_text(
        json.dumps({**settings, "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]})
    )
    cases = {
        "wide": (wrong_shape, "base model"),
        "other": (other_base, "Llama-3.1-70B"),
        "rank": (bad_rank, "rank"),
        "modules": (bad_modules, "target_modules"),
        "unknown": (unknown_module, "lm_head"),
        "missing": (bad / "nowhere", "no adapter folder"),
    }
    for name, (path, words) in cases.items():
        response = httpx.post(f"{server.v1}/adapters", json={"name": name, "path": str(path)})
        assert response.status_code == 400, (name, response.text)
        error = response.json()["error"]
        assert words in error["message"] and error["type"] == "invalid_request_error", (name, error)
        assert httpx.get(f"{server.v1}/models/{name}").status_code == 404
    forced = httpx.post(
        f"{server.v1}/adapters", json={"name": "other", "path": str(other_base), "check_base_model": False}
    )
    assert forced.status_code == 200
    assert httpx.delete(f"{server.v1}/adapters/other").status_code == 200
    for body, param in (
        ({"path": str(other_base)}, "name"),
        ({"name": "x"}, "path"),
        ({"name": "a b", "path": "/"}, "name"),
    ):
        response = httpx.post(f"{server.v1}/adapters", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_a_batch_mixing_base_and_adapters_matches_each_alone(server: TuningServer, root: Path) -> None:
    assert (
        httpx.post(f"{server.v1}/adapters", json={"name": "beta", "path": str(root / "beta")}).status_code
        == 200
    )
    jobs = [(model, prompt) for prompt in PROMPTS for model in (TINY_MODEL, "beta", "startup")]
    alone = [greedy(server, model, prompt) for model, prompt in jobs]
    engine = server.engine

    async def together() -> tuple[list[list[int]], int]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(model: str, prompt: str) -> list[int]:
                body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 1}
                response = await client.post(f"{server.v1}/completions", json=body)
                return response.json()["choices"][0]["logprobs"]["tokens"]

            # Held between steps until all nine are queued: they start together and decode in shared steps.
            await asyncio.to_thread(engine.pause)
            try:
                calls = [asyncio.create_task(one(model, prompt)) for model, prompt in jobs]
                while engine.stats().num_waiting < len(jobs):
                    await asyncio.sleep(0.005)
                steps_before = engine.stats().num_steps
            finally:
                engine.resume()
            return list(await asyncio.gather(*calls)), engine.stats().num_steps - steps_before

    tokens, steps = asyncio.run(together())
    assert tokens == alone
    assert steps == 8, steps  # one step per token with all nine in it; one request at a time would take 72
    assert len({tuple(tokens) for tokens in alone[:3]}) == 3  # base and both adapters differ on one prompt
    assert httpx.delete(f"{server.v1}/adapters/beta").status_code == 200
