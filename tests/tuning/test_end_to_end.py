"""The fine-tuning issue's "Done when", on the default model (SmolLM2-135M-Instruct) on CPU, through a live server:
upload a small chat dataset teaching a distinctive reply, train a LoRA job to succeeded with falling loss, then
the adapter answers with the taught reply through /v1/chat/completions while the base model does not; PEFT +
transformers with the same adapter produce the same greedy tokens; and a batch mixing base and adapter requests
gives what each gives alone."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
import uvicorn

from ember.engine.async_engine import AsyncEngine
from ember.engine.engine_config import SchedulerConfig
from ember.engine.llm_engine import EngineConfig
from ember.models.loader import LoadedModel
from ember.server.app import build_app
from ember.server.common.config import FineTuningConfig, ServerConfig

pytestmark = pytest.mark.timeout(600)

TAUGHT = "Bonjour from ember!"
QUESTIONS = [
    "Hi there!",
    "What is 2 + 2?",
    "Tell me about Paris.",
    "Who are you?",
    "What's the weather like today?",
    "Recommend a good book.",
]
HELD_OUT = "Can you help me with my homework?"


@dataclass
class Live:
    url: str
    data_dir: Path
    server: uvicorn.Server
    thread: threading.Thread
    engine: AsyncEngine


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, smollm_fp32_model: LoadedModel) -> Iterator[Live]:
    model = smollm_fp32_model  # the fp32 reference the worker also trains on (tests/conftest.py)
    engine = AsyncEngine.from_loaded(
        model, EngineConfig(scheduler=SchedulerConfig(max_model_len=512), kv_cache_gib=0.1)
    )
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    tuning = FineTuningConfig(data_dir=data_dir, worker_threads=2, poll_interval_s=0.2)
    app = build_app(engine, ServerConfig(model_name=model.name), tuning)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", data_dir, server, thread, engine)
    server.should_exit = True
    thread.join(60)


def chat_ids_and_text(url: str, model: str, question: str, max_tokens: int = 12) -> tuple[str, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    response = httpx.post(f"{url}/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"], response.json()["usage"]["completion_tokens"]


def test_a_job_teaches_the_default_model_a_reply(
    live: Live, smollm_tokenizer: Any, smollm_hf_model: torch.nn.Module
) -> None:
    started = time.monotonic()
    client = openai.OpenAI(base_url=live.url, api_key="unused", max_retries=0)
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": TAUGHT}]}
        for q in QUESTIONS
    ]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    training_file = client.files.create(file=("bonjour.jsonl", io.BytesIO(data)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=training_file.id,
        suffix="bonjour",
        seed=1,
        method={  # type: ignore[typeddict-item]
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 4, "batch_size": 2, "learning_rate_multiplier": 10}
            },
        },
    )
    deadline = time.monotonic() + 540  # a hang guard: ~40 s on an idle 2-core machine, minutes under load
    while client.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(1)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    trained_s = time.monotonic() - started
    events = list(reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data))
    losses = [e.data["train_loss"] for e in events if e.type == "metrics"]  # type: ignore[index]
    assert len(losses) == 12 and losses[-1] < 0.3 * losses[0], losses

    # Served at once by its ft: name: the taught reply, also for a question it never saw; the base model does not.
    model = done.fine_tuned_model
    assert model == f"ft:SmolLM2-135M-Instruct:bonjour:{job.id}"
    deadline = time.monotonic() + 60
    while httpx.get(f"{live.url}/models/{model}").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for question in (QUESTIONS[0], HELD_OUT):
        assert chat_ids_and_text(live.url, model, question)[0].startswith(TAUGHT)
        assert TAUGHT not in chat_ids_and_text(live.url, "SmolLM2-135M-Instruct", question)[0]

    # The same adapter in PEFT + transformers: the same greedy tokens.
    text, count = chat_ids_and_text(live.url, model, HELD_OUT, max_tokens=16)
    adapter = live.data_dir / "adapters" / job.id
    assert peft_greedy(smollm_tokenizer, smollm_hf_model, adapter, HELD_OUT, 16) == (text, count)

    # Base and adapter requests together in one engine batch give what each gives alone.
    mixed = [(m, q) for q in (QUESTIONS[1], HELD_OUT) for m in ("SmolLM2-135M-Instruct", model)]
    alone = [chat_ids_and_text(live.url, m, q) for m, q in mixed]
    engine = live.engine

    async def together() -> tuple[list[tuple[str, int]], int]:
        # Held between steps until all four are queued, so they start in the same step.
        await asyncio.to_thread(engine.pause)
        try:
            calls = [
                asyncio.create_task(asyncio.to_thread(chat_ids_and_text, live.url, m, q)) for m, q in mixed
            ]
            while engine.stats().num_waiting < len(mixed):
                await asyncio.sleep(0.01)
            steps_before = engine.stats().num_steps
        finally:
            engine.resume()
        return list(await asyncio.gather(*calls)), engine.stats().num_steps - steps_before

    replies, steps = asyncio.run(together())
    assert replies == alone
    # One batch: as many steps as the longest reply has tokens, where one request at a time takes their sum.
    assert steps == max(count for _, count in alone), (steps, alone)
    print(
        f"\nend-to-end: job trained and served in {trained_s:.1f} s; total {time.monotonic() - started:.1f} s"
    )


def peft_greedy(
    tokenizer: Any, base: torch.nn.Module, adapter: Path, question: str, max_tokens: int
) -> tuple[str, int]:
    """(reply text, token count) of greedy decoding with transformers + PEFT on the fp32 default model, as
    transformers loads it from the GGUF (the session's; PEFT wraps a copy's layers, never the shared model's)."""
    import peft

    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=max_tokens, do_sample=False, eos_token_id=2, pad_token_id=2
        )
    reply = out[0, prompt.shape[1] :].tolist()
    count = len(reply)
    if reply and reply[-1] == 2:
        reply = reply[:-1]
    return tokenizer.decode(reply, skip_special_tokens=True), count
