"""Several base models in one live server, through the real openai and anthropic SDKs: the default tiny model in
memory, `model-b` (a smaller random Llama folder, loaded at start, with a LoRA adapter of its own) and `model-c`
(another folder, lazy, keep-alive 0), plus `model-d`, whose KV budget the memory budget refuses."""

from __future__ import annotations

import concurrent.futures
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from adapter_files import write_adapter
from live_server import TINY_MODEL, TINY_MODEL_ID, serve_in_thread

from ember.engine.async_engine import AsyncEngine
from ember.engine.engine_config import EngineConfig, SchedulerConfig
from ember.engine.llm import LLM
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_config, tiny_engine_config, tiny_loaded_model, write_tiny_hf_folder
from ember.model_engines import EngineSettings, ModelOpener
from ember.model_specs import ModelSpec
from ember.server.app import build_app
from ember.server.common.config import FineTuningConfig, ServerConfig
from ember.server.common.memory_budget import MemoryEstimate
from ember.server.common.model_registry import RegistryConfig
from ember.threads import StepGate

B_SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}
PROMPT = "The quick brown fox"
MODEL_ID = "accounts/fireworks/models/{}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("several-models")
    b = write_tiny_hf_folder(root / "model-b", seed=5, **B_SIZES)
    c = write_tiny_hf_folder(root / "model-c", seed=7)
    lora = write_adapter(root / "b-lora", tiny_config(**B_SIZES), seed=1, base_model="model-b")
    write_adapter(root / "adapters" / "b-lora-2", tiny_config(**B_SIZES), seed=2, base_model="model-b")
    return {"b": b, "c": c, "b-lora": lora, "adapters": root / "adapters"}


@pytest.fixture(scope="module")
def url(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    scheduler = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256, max_model_len=256)
    opener = ModelOpener(EngineSettings(EngineConfig(scheduler=scheduler, kv_cache_gib=0.01)), StepGate())
    specs = (
        ModelSpec("model-b", str(folders["b"]), loras=(("b-lora", str(folders["b-lora"])),)),
        ModelSpec("model-c", str(folders["c"]), lazy=True, keep_alive_s=0.0),
        ModelSpec("model-d", str(folders["c"]), lazy=True, kv_cache_gib=4.0),  # over the budget below
    )
    budget = sum(opener.estimate(spec).total_bytes for spec in specs[:2]) + 2**20
    engine = AsyncEngine.from_loaded(
        tiny_loaded_model(), tiny_engine_config(max_model_len=256), opener.step_gate
    )
    data_dir = tmp_path_factory.mktemp("several-models-data")  # batches need a data directory
    app = build_app(
        engine,
        ServerConfig(model_name=TINY_MODEL, adapter_dirs=(folders["adapters"],)),
        FineTuningConfig(data_dir=data_dir, worker_threads=1, poll_interval_s=0.1),
        None,
        # model-b loaded before the server starts, as `ember serve` does with the models that are not lazy
        more_models=RegistryConfig(
            specs,
            opener,
            budget,
            MemoryEstimate(0, 0),
            {0: (opener.open(specs[0]), opener.estimate(specs[0]))},
        ),
    )
    server, thread, address = serve_in_thread(app)
    yield address
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def complete(client: openai.OpenAI, model: str) -> openai.types.Completion:
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0)


def model_state(url: str, model: str) -> dict[str, object]:
    rows = httpx.get(f"{url}/health").json()["models"]
    return next(row for row in rows if row["model"] == MODEL_ID.format(model))


def offline_text(folder: Path) -> str:
    llm = LLM(str(folder), weight_format="fp32", engine_config=EngineConfig(kv_cache_gib=0.01))
    ids = llm.tokenizer.encode(PROMPT, add_special_tokens=True)
    (output,) = llm.generate([ids], SamplingParams(max_tokens=6, temperature=0.0))
    return output.outputs[0].text


def test_listing_has_every_model_and_each_adapter_under_its_base(client: openai.OpenAI) -> None:
    cards = {card.id: card for card in client.models.list().data}
    assert {TINY_MODEL_ID, *(MODEL_ID.format(m) for m in ("model-b", "model-c", "model-d"))} <= set(cards)
    assert cards[MODEL_ID.format("b-lora")].model_extra["parent"] == MODEL_ID.format("model-b")
    assert client.models.retrieve("model-d").model_extra["status"] == "unloaded"


def test_each_model_answers_by_name_with_its_own_weights(
    client: openai.OpenAI, folders: dict[str, Path], url: str
) -> None:
    b = complete(client, "model-b")
    assert b.model == "model-b"
    assert b.choices[0].text == offline_text(folders["b"])  # the answer is model-b's own
    c = complete(client, "model-c")  # loaded by this request (lazy)
    default = complete(client, TINY_MODEL)
    assert c.model == "model-c" and default.model == TINY_MODEL
    assert len({b.choices[0].text, c.choices[0].text, default.choices[0].text}) == 3
    chat = client.chat.completions.create(
        model="b-lora", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert chat.model == "b-lora"  # the adapter runs on model-b's engine
    # embeddings via the chat LLM: model-b's hidden size, not the default model's
    assert len(client.embeddings.create(model="model-b", input="hello").data[0].embedding) == 32
    assert len(client.embeddings.create(model=TINY_MODEL, input="hello").data[0].embedding) == 64
    claude = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    message = claude.messages.create(
        model="model-b", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.model == "model-b"
    response = client.responses.create(model="model-b", input="hi", max_output_tokens=4)
    assert response.model == "model-b"
    rerank = httpx.post(f"{url}/v1/rerank", json={"model": "model-b", "query": "q", "documents": ["a", "b"]})
    assert rerank.json()["model"] == "model-b"  # the LLM's yes/no judgement, on model-b
    tokens = httpx.post(f"{url}/tokenize", json={"model": "model-b", "prompt": PROMPT}).json()
    assert httpx.post(f"{url}/detokenize", json={"model": "model-b", "tokens": tokens["tokens"]}).json() == {
        "prompt": PROMPT
    }


def test_an_unknown_model_is_a_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        complete(client, "no-such-model")
    assert caught.value.code == "model_not_found"


def test_keep_alive_unloads_and_the_next_requests_load_it_once(client: openai.OpenAI, url: str) -> None:
    deadline = time.monotonic() + 30
    while (
        model_state(url, "model-c")["state"] != "unloaded"
    ):  # keep-alive 0: unloaded once idle (or never loaded)
        assert time.monotonic() < deadline, "model-c was never unloaded"
        time.sleep(0.1)
    loads = model_state(url, "model-c")["loads"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: complete(client, "model-c"), range(3)))
    assert {a.model for a in answers} == {"model-c"}
    assert model_state(url, "model-c")["loads"] == loads + 1  # three requests waited for one load
    assert model_state(url, "model-b")["state"] == "loaded"  # no keep-alive: stays


def test_a_load_beyond_the_memory_budget_is_refused_with_the_numbers(client: openai.OpenAI, url: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        complete(client, "model-d")
    assert caught.value.status_code == 503
    message = caught.value.message
    assert "model-d" in message and "GiB" in message and "memory budget" in message
    assert model_state(url, "model-d")["state"] == "unloaded"
    assert complete(client, "model-b").model == "model-b"  # the server keeps serving


def test_metrics_carry_each_model_name_once_per_family(client: openai.OpenAI, url: str) -> None:
    complete(client, "model-b")
    text = httpx.get(f"{url}/metrics").text
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    for name in (TINY_MODEL_ID, MODEL_ID.format("model-b"), MODEL_ID.format("model-d")):
        assert f'vllm:num_requests_running{{model_name="{name}"}}' in text
    assert f'vllm:e2e_request_latency_seconds_count{{model_name="{MODEL_ID.format("model-b")}"}}' in text


def test_an_adapter_loaded_at_run_time_goes_to_the_base_model_it_names(
    client: openai.OpenAI, url: str
) -> None:
    body = {"name": "b-lora-2", "path": "b-lora-2", "base_model": "model-b"}
    loaded = httpx.post(f"{url}/v1/adapters", json=body)
    assert loaded.status_code == 200, loaded.text
    assert complete(client, "b-lora-2").model == "b-lora-2"  # model-b's shapes: it runs on model-b's engine
    names = {a["name"] for a in httpx.get(f"{url}/v1/adapters").json()["data"]}
    assert {"b-lora", "b-lora-2"} <= names
    for base, status, param in (("model-c", 400, "base_model"), ("nope", 404, "base_model")):
        refused = httpx.post(f"{url}/v1/adapters", json={**body, "name": "x", "base_model": base})
        assert (refused.status_code, refused.json()["error"]["param"]) == (status, param)
    assert httpx.delete(f"{url}/v1/adapters/b-lora-2").json()["deleted"] is True


def test_batch_lines_run_on_the_model_each_names(client: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": model,
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0},
        }
        for model in ("model-b", TINY_MODEL, "no-such-model")
    ]
    upload = client.files.create(
        file=("requests.jsonl", io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, "the batch did not finish"
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id and batch.error_file_id
    outputs = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    answers = {o["custom_id"]: o["response"]["body"] for o in outputs}
    assert answers["model-b"]["model"] == "model-b"
    assert answers["model-b"]["choices"][0]["text"] == complete(client, "model-b").choices[0].text
    assert answers[TINY_MODEL]["model"] == TINY_MODEL
    (error,) = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert (error["custom_id"], error["response"]["status_code"]) == ("no-such-model", 404)
