"""The served checkpoint's generation defaults reach every API request that leaves a value out."""

from __future__ import annotations

import dataclasses

import httpx
from live_server import MAX_MODEL_LEN, TINY_MODEL, start_server

from ember.engine.async_engine import AsyncEngine
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.models.checkpoint import GenerationDefaults
from ember.server.common.config import ServerConfig


def test_an_omitted_temperature_is_the_checkpoints() -> None:
    model = tiny_loaded_model()
    greedy_checkpoint = dataclasses.replace(
        model, generation=GenerationDefaults(eos_token_ids=(2,), temperature=0.0)
    )
    engine = AsyncEngine.from_loaded(greedy_checkpoint, tiny_engine_config(max_model_len=MAX_MODEL_LEN))
    server = start_server(engine, ServerConfig(model_name=TINY_MODEL))
    try:

        def tokens(**fields: object) -> str:
            body = {"model": TINY_MODEL, "prompt": "Once upon a time", "max_tokens": 12, **fields}
            reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            return reply.json()["choices"][0]["text"]

        greedy = tokens(temperature=0)
        assert tokens() == greedy, "no temperature: the checkpoint's 0, so greedy"
        assert tokens(seed=1) == greedy
        assert tokens(temperature=1.0, seed=1) != greedy, "the request's own temperature wins"
    finally:
        server.stop()
