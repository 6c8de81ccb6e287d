"""Stored responses with a data directory and API keys: each account sees only its own responses (and their
items), and responses.db keeps them across a server restart."""

from __future__ import annotations

import threading
from pathlib import Path

import openai
import pytest
import uvicorn
from live_server import serve_in_thread

from ember.engine.async_engine import AsyncEngine
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.server.app import build_app
from ember.server.common.api_keys import ApiKey, key_digest
from ember.server.common.config import FineTuningConfig, ServerConfig
from ember.server.common.tenancy import Tenant
from ember.server.responses.store import DB_FILE, ResponseStore
from ember.tuning.ownership import OwnerScope

MODEL = "tiny-llama"
KEYS = {"key-alice": Tenant("alice"), "key-bob": Tenant("bob"), "key-admin": Tenant("ops", admin=True)}


def start(data_dir: Path) -> tuple[uvicorn.Server, threading.Thread, str]:
    engine = AsyncEngine.from_loaded(tiny_loaded_model(), tiny_engine_config(max_model_len=256))
    config = ServerConfig(
        model_name=MODEL, tenant_keys=tuple(ApiKey(key_digest(key), tenant) for key, tenant in KEYS.items())
    )
    return serve_in_thread(
        build_app(engine, config, FineTuningConfig(data_dir=data_dir, poll_interval_s=0.1))
    )


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_responses_are_their_accounts_own_and_survive_a_restart(tmp_path: Path) -> None:
    server, thread, url = start(tmp_path)
    alice, bob, admin = client(url, "key-alice"), client(url, "key-bob"), client(url, "key-admin")
    try:
        first = alice.responses.create(model=MODEL, input="private", max_output_tokens=3)
        item_id = alice.responses.input_items.list(first.id).data[0].id
        for call in (
            lambda: bob.responses.retrieve(first.id),
            lambda: bob.responses.input_items.list(first.id),
            lambda: bob.responses.delete(first.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        for request in (
            {"previous_response_id": first.id, "input": "more"},
            {"input": [{"type": "item_reference", "id": item_id}]},
        ):
            with pytest.raises(openai.BadRequestError):
                bob.responses.create(model=MODEL, max_output_tokens=2, **request)
        assert admin.responses.retrieve(first.id).id == first.id
        second = alice.responses.create(
            model=MODEL, previous_response_id=first.id, input="more", max_output_tokens=3
        )
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    assert (tmp_path / DB_FILE).is_file()

    server, thread, url = start(tmp_path)
    alice = client(url, "key-alice")
    try:
        assert alice.responses.retrieve(second.id).output_text == second.output_text
        texts = [
            item.content[0].text for item in alice.responses.input_items.list(second.id, order="asc").data
        ]
        assert texts == ["private", first.output_text, "more"]
        third = alice.responses.create(
            model=MODEL, previous_response_id=second.id, input="again", max_output_tokens=2
        )
        assert third.usage.input_tokens > second.usage.input_tokens
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def test_a_restart_fails_the_background_responses_it_interrupted(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / DB_FILE)
    running = {"id": "resp_1", "created_at": 1, "status": "in_progress", "error": None, "output": []}
    finished = {**running, "id": "resp_2", "status": "completed"}
    for response in (running, finished):
        store.save(response, [], [], "alice")
    reopened = ResponseStore(tmp_path / DB_FILE)
    interrupted = reopened.get("resp_1", OwnerScope("alice"))
    assert interrupted is not None and interrupted.response["status"] == "failed"
    assert "server stopped" in interrupted.response["error"]["message"]
    kept = reopened.get("resp_2", None)
    assert kept is not None and kept.response == finished
    assert reopened.get("resp_1", OwnerScope("bob")) is None
