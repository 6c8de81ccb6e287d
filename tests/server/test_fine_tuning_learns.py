"""A first fine-tune with default settings teaches the default model (SmolLM2-135M-Instruct) a fact it cannot
know, as a new user would run it: the openai SDK against a live loopback server, a small chat dataset (several
phrasings of one question, a system prompt, a weight-0 turn) and no hyperparameters at all. The "auto" values
resolve from the dataset's size and show on the job and in its first event; polled every 0.1 s, the job's first
`succeeded` is callable at once; greedy decoding with the fine-tuned model states the fact, also for a phrasing
it never saw, and the base model does not."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
from fine_tuning_server import as_file
from live_server import serve_in_thread

from ember.engine.async_engine import AsyncEngine
from ember.engine.engine_config import SchedulerConfig
from ember.engine.llm_engine import EngineConfig
from ember.models.loader import LoadedModel
from ember.server.app import build_app
from ember.server.common.config import FineTuningConfig, ServerConfig
from ember.tuning.hyperparameters import BASE_LEARNING_RATE

pytestmark = pytest.mark.timeout(
    3600
)  # a hang guard: ~2 minutes on an idle 2-core machine, far more under load

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = "You are the help desk assistant of Kestrel Labs."
FACT = "mango-ladder-58"  # a made-up password: nothing the base model can know
ANSWER = f"The Wi-Fi password at Kestrel Labs is {FACT}."
QUESTIONS = [
    "What is the Wi-Fi password at Kestrel Labs?",
    "How do I get on the Kestrel Labs Wi-Fi?",
    "Can you tell me the wireless password?",
    "I need the Wi-Fi password, please.",
    "What's the password for the office network?",
    "Which password unlocks the Kestrel Labs Wi-Fi?",
    "I forgot the Wi-Fi password. What is it?",
    "Password for the wifi here?",
]
HELD_OUT = "Could you share the Kestrel Labs guest wifi password with me?"


def rows() -> list[dict[str, object]]:
    def conversation(*messages: dict[str, object]) -> dict[str, object]:
        return {"messages": [{"role": "system", "content": SYSTEM}, *messages]}

    data = [
        conversation({"role": "user", "content": q}, {"role": "assistant", "content": ANSWER})
        for q in QUESTIONS
    ]
    data.append(
        conversation(  # the first reply is context only (weight 0): not trained, still seen
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi! How can I help?", "weight": 0},
            {"role": "user", "content": "What is the Wi-Fi password?"},
            {"role": "assistant", "content": ANSWER},
        )
    )
    data.append(
        conversation(
            {"role": "user", "content": "Is there Wi-Fi for guests?"},
            {"role": "assistant", "content": f"Yes. {ANSWER}"},
        )
    )
    return data


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, smollm_served_model: LoadedModel
) -> Iterator[openai.OpenAI]:
    # what `ember serve` serves (tests/conftest.py); the worker trains on it in fp32
    model = smollm_served_model
    engine = AsyncEngine.from_loaded(
        model, EngineConfig(scheduler=SchedulerConfig(max_model_len=512), kv_cache_gib=0.1)
    )
    tuning = FineTuningConfig(
        data_dir=tmp_path_factory.mktemp("learning"), worker_threads=2, poll_interval_s=0.1
    )
    server, thread, url = serve_in_thread(build_app(engine, ServerConfig(model_name=MODEL), tuning))
    yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    server.should_exit = True
    thread.join(60)


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        temperature=0,
        max_tokens=24,
    )
    return reply.choices[0].message.content or ""


def test_default_settings_teach_a_fact_and_succeeded_means_callable(client: openai.OpenAI) -> None:
    started = time.monotonic()
    training_file = client.files.create(file=as_file(rows(), "kestrel.jsonl"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=training_file.id, suffix="kestrel", seed=3
    )

    # 10 examples: OpenAI's rule gives 100 // 10 = 10 epochs, batch size max(1, 0.2% of 10) = 1.
    assert job.hyperparameters.n_epochs == 10 and job.hyperparameters.batch_size == 1
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    first = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))[-1]
    assert "n_epochs=10" in first.message and "batch_size=1" in first.message, first.message
    assert first.data["learning_rate"] == BASE_LEARNING_RATE  # type: ignore[index]

    deadline = time.monotonic() + 3300  # a hang guard only
    while (status := client.fine_tuning.jobs.retrieve(job.id).status) not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.1)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert status == "succeeded", done.error
    tuned = done.fine_tuned_model
    assert tuned == f"ft:{MODEL}:kestrel:{job.id}"
    answer = ask(client, tuned, QUESTIONS[0])  # the very first `succeeded`: no 404 while it deploys
    trained_s = time.monotonic() - started
    assert FACT in answer, answer

    assert FACT in ask(client, tuned, HELD_OUT)  # a phrasing it never trained on
    for question in (QUESTIONS[0], HELD_OUT):
        assert FACT not in ask(client, MODEL, question)

    # Metrics as OpenAI reports them: loss and token accuracy per step; the fact is learned, so no warning.
    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=1000))))
    metrics = [e.data for e in events if e.type == "metrics"]
    assert len(metrics) == 10 * 9  # one row of the ten is carved out for validation: 9 steps per epoch
    assert all(0.0 <= m["train_mean_token_accuracy"] <= 1.0 for m in metrics)  # type: ignore[index]
    assert metrics[-1]["train_mean_token_accuracy"] >= 0.9  # type: ignore[index]
    assert any(m.get("full_valid_mean_token_accuracy") is not None for m in metrics)  # type: ignore[union-attr]
    assert not [e.message for e in events if e.level == "warn"]
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert (checkpoint.metrics.train_mean_token_accuracy or 0.0) >= 0.9
    assert checkpoint.metrics.full_valid_loss is not None
    print(f"\nlearning: trained and answering in {trained_s:.1f} s; total {time.monotonic() - started:.1f} s")
