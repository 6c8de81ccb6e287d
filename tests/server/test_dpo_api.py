"""DPO end to end on a live server with a tiny random model, through the real `openai` SDK
(`method={"type": "dpo"}`) and the real fireworks-ai SDK (`dpo_jobs`): preference files validated at upload
with line-numbered errors, a job that trains in a worker process and succeeds only once its adapter is served,
and, measured through /v1/completions logprobs as any client could, a fine-tuned model whose log-probability
margin of preferred over non-preferred replies on held-out pairs is above the base model's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import fireworks
import httpx
import openai
import pytest
from fine_tuning_server import (
    ACCOUNT,
    TINY_MODEL,
    TuningServer,
    as_file,
    chat_row,
    jsonl,
    start_tuning_server,
    wait_for,
    write_tiny_model,
)

from ember.tuning.masking import ConversationMasker
from ember.tuning.preference_data import tokenize_pair

pytestmark = pytest.mark.timeout(240)

PREFERRED = "Certainly! Here is a clear answer."
NON_PREFERRED = "no"
# the tiny model moves in a few steps at 5e-3 (DPO's base rate is 5e-5)
FAST = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 100, "beta": 0.1}


def pair(question: str, preferred: str = PREFERRED, rejected: str = NON_PREFERRED) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": question}], "tools": []},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


TRAIN = [pair(f"Question number {i}: what do you say?") for i in range(8)]
HELD_OUT = [pair("A new question nobody asked before."), pair("Tell me something else.")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuningServer]:
    model_dir = write_tiny_model(tmp_path_factory.mktemp("models") / TINY_MODEL)
    running = start_tuning_server(model_dir, tmp_path_factory.mktemp("data"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: TuningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def fw(server: TuningServer) -> fireworks.Fireworks:
    return fireworks.Fireworks(base_url=server.url, api_key="unused", max_retries=0)


def margin(server: TuningServer, client: openai.OpenAI, model: str) -> float:
    """Mean over the held-out pairs of log p(preferred reply) - log p(non-preferred reply), each summed over
    the reply's tokens after the chat-rendered prompt, from the served model's echoed prompt logprobs."""
    masker = ConversationMasker.for_model(server.engine.engine.model)
    total = 0.0
    for i, row in enumerate(HELD_OUT):
        tokenized = tokenize_pair(row, masker, i)
        assert tokenized is not None
        sides = []
        for side in (tokenized.preferred, tokenized.non_preferred):
            result = client.completions.create(
                model=model, prompt=side.input_ids, max_tokens=1, echo=True, logprobs=0, temperature=0
            )
            logprobs = result.choices[0].logprobs.token_logprobs  # type: ignore[union-attr]
            sides.append(sum(lp for lp, w in zip(logprobs, side.loss_weights, strict=False) if w > 0))
        total += sides[0] - sides[1]
    return total / len(HELD_OUT)


def test_dpo_job_through_the_openai_sdk(server: TuningServer, client: openai.OpenAI) -> None:
    training_file = client.files.create(file=as_file(TRAIN), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=training_file,
        suffix="polite",
        seed=3,
        method={"type": "dpo", "dpo": {"hyperparameters": FAST}},  # type: ignore[typeddict-item]
    )
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None and job.method.dpo.hyperparameters.beta == 0.1
    deadline = time.monotonic() + 200  # a hang guard only
    while (status := client.fine_tuning.jobs.retrieve(job.id).status) not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, f"{job.id} did not finish"
        time.sleep(0.1)  # polled as an impatient user would: the first succeeded must be callable
    assert status == "succeeded", client.fine_tuning.jobs.retrieve(job.id).error
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.fine_tuned_model == f"ft:{TINY_MODEL}:polite:{job.id}" and done.trained_tokens

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    metrics = [e.data for e in reversed(events) if e.type == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]  # type: ignore[index]
    first, last = metrics[0], metrics[-1]
    assert first["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # type: ignore[index]  # log 2: policy == ref
    assert last["train_loss"] < first["train_loss"] and last["train_reward_accuracy"] == 1.0  # type: ignore[index]
    assert last["train_reward_margin"] > 0  # type: ignore[index]
    assert any("Reference log-probabilities of 8 pairs" in e.message for e in events)
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert checkpoint.metrics.train_loss == last["train_loss"]  # type: ignore[index]

    # Succeeded means served: callable at once, and it prefers the preferred replies more than the base does.
    answer = client.chat.completions.create(
        model=done.fine_tuned_model,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "Hello?"}],
        max_tokens=4,
        temperature=0,
    )
    assert answer.model == done.fine_tuned_model
    base, tuned = margin(server, client, TINY_MODEL), margin(server, client, done.fine_tuned_model)  # type: ignore[arg-type]
    assert tuned > base + 1.0, (base, tuned)


def test_dpo_job_through_the_fireworks_sdk(
    server: TuningServer, client: openai.OpenAI, fw: fireworks.Fireworks
) -> None:
    datasets = f"{server.v1}/accounts/{ACCOUNT}/datasets"
    assert httpx.post(datasets, json={"datasetId": "prefs"}).status_code == 200
    uploaded = httpx.post(f"{datasets}/prefs:upload", files={"file": ("p.jsonl", jsonl(TRAIN))})
    assert uploaded.status_code == 200, uploaded.text
    training_config = {
        "base_model": f"accounts/{ACCOUNT}/models/{TINY_MODEL}",
        "output_model": "polite-fw",
        "epochs": 2,
        "learning_rate": 5e-3,
        "batch_size_samples": 4,
        "lora_rank": 4,
        "max_context_length": 256,
    }
    created = fw.dpo_jobs.create(
        account_id=ACCOUNT,
        dataset="prefs",
        dpo_job_id="polite",
        display_name="Polite",
        training_config=training_config,  # type: ignore[arg-type]
        loss_config={"method": "DPO", "dpo": {"beta": 0.2}},
    )
    assert created.name == f"accounts/{ACCOUNT}/dpoJobs/polite" and created.display_name == "Polite"
    assert created.dataset == f"accounts/{ACCOUNT}/datasets/prefs" and created.state == "JOB_STATE_VALIDATING"
    assert created.training_config is not None and created.training_config.lora_rank == 4
    assert created.training_config.output_model == f"accounts/{ACCOUNT}/models/polite-fw"
    assert created.loss_config is not None and created.loss_config.dpo.beta == 0.2  # type: ignore[union-attr]
    assert "polite" in [j.name.rsplit("/", 1)[-1] for j in fw.dpo_jobs.list(account_id=ACCOUNT)]  # type: ignore[union-attr]
    wait_for(
        lambda: (
            fw.dpo_jobs.get("polite", account_id=ACCOUNT).state in ("JOB_STATE_COMPLETED", "JOB_STATE_FAILED")
        )
    )
    done = fw.dpo_jobs.get("polite", account_id=ACCOUNT)
    assert done.state == "JOB_STATE_COMPLETED", done.status
    # The same job through OpenAI's API, and never as a supervised job.
    assert client.fine_tuning.jobs.retrieve("polite").method.type == "dpo"  # type: ignore[union-attr]
    sft = f"{server.v1}/accounts/{ACCOUNT}/supervisedFineTuningJobs"
    for response in (
        httpx.get(f"{sft}/polite"),
        httpx.post(f"{sft}/polite:resume"),
        httpx.post(f"{sft}/polite:cancel"),
        httpx.delete(f"{sft}/polite"),
        httpx.get(f"{sft}/polite/metrics"),
    ):
        assert response.status_code == 404, response.request.url
    assert "polite" not in [j["name"] for j in httpx.get(sft).json()["supervisedFineTuningJobs"]]

    endpoint = fw.dpo_jobs.get_metrics_file_endpoint("polite", account_id=ACCOUNT)
    assert endpoint.signed_url
    steps = [json.loads(line) for line in httpx.get(endpoint.signed_url).text.splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all(0.0 <= s["train_reward_accuracy"] <= 1.0 for s in steps)

    output_model = f"accounts/{ACCOUNT}/models/polite-fw"
    for name in (output_model, "polite-fw"):
        answer = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
        )
        assert answer.model == name

    # Cancel and resume a second job before it trains, then delete it.
    fw.dpo_jobs.create(
        account_id=ACCOUNT,
        dataset="prefs",
        dpo_job_id="again",
        training_config=training_config,  # type: ignore[arg-type]
    )
    fw.dpo_jobs.cancel("again", account_id=ACCOUNT, body={})
    assert fw.dpo_jobs.get("again", account_id=ACCOUNT).state == "JOB_STATE_CANCELLED"
    fw.dpo_jobs.resume("again", account_id=ACCOUNT, body={})
    assert fw.dpo_jobs.get("again", account_id=ACCOUNT).state in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    fw.dpo_jobs.cancel("again", account_id=ACCOUNT, body={})
    fw.dpo_jobs.delete("again", account_id=ACCOUNT)
    with pytest.raises(fireworks.NotFoundError):
        fw.dpo_jobs.get("again", account_id=ACCOUNT)


def test_bad_preference_files_get_line_numbered_errors(client: openai.OpenAI, server: TuningServer) -> None:
    rows: list[Any] = [
        pair("Fine?"),
        {"input": {"messages": [{"role": "user", "content": "x"}]}, "preferred_output": []},
        pair("Same?", "same", "same"),
        chat_row("a chat row", "among preference rows"),
    ]
    with pytest.raises(openai.BadRequestError) as rejected:
        client.files.create(file=as_file(rows), purpose="fine-tune")
    error = rejected.value.body["validation"]  # type: ignore[index]
    found = [(p["line"], p["code"]) for p in error["problems"]]
    assert (2, "invalid_preferred_output") in found and (2, "missing_non_preferred_output") in found
    assert (3, "identical_outputs") in found and (4, "mixed_formats") in found
    assert rejected.value.body["param"] == "line 2"  # type: ignore[index]
    datasets = f"{server.v1}/accounts/{ACCOUNT}/datasets"
    assert httpx.post(datasets, json={"datasetId": "bad-prefs"}).status_code == 200
    upload = httpx.post(f"{datasets}/bad-prefs:upload", files={"file": ("p.jsonl", jsonl(rows))})
    assert upload.status_code == 400 and upload.json()["error"]["param"] == "line 2"


def test_bad_hyperparameters_and_mismatched_data_are_400s(
    client: openai.OpenAI, server: TuningServer
) -> None:
    prefs = client.files.create(file=as_file(TRAIN), purpose="fine-tune").id
    chats = client.files.create(
        file=as_file([chat_row(f"q{i}", "a") for i in range(3)]), purpose="fine-tune"
    ).id
    dpo = "method.dpo.hyperparameters"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}, f"{dpo}.beta"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}}, f"{dpo}.beta"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "high"}}}}, f"{dpo}.beta"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 0}}}}, "hyperparameters"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": "x"}}}}, f"{dpo}.n_epochs"),
        ({"method": {"type": "dpo", "supervised": {}}}, "method.supervised"),
        ({"method": {"type": "dpo"}, "hyperparameters": {"n_epochs": 2}}, "hyperparameters"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}},
            "method.supervised.hyperparameters.beta",
        ),
        ({"method": {"type": "dpo"}, "training_file": chats}, "training_file"),
        ({"method": {"type": "supervised"}}, "training_file"),  # preference rows for a supervised job
    ]
    for extra, param in cases:
        body = {"model": TINY_MODEL, "training_file": prefs, **extra}
        response = httpx.post(f"{server.v1}/fine_tuning/jobs", json=body)
        assert response.status_code == 400, (extra, response.text)
        assert response.json()["error"]["param"] == param, (extra, response.json())

    jobs = f"{server.v1}/accounts/{ACCOUNT}/dpoJobs"
    base = {"dataset": "prefs-2", "trainingConfig": {"baseModel": TINY_MODEL}}
    fireworks_cases: list[tuple[dict[str, Any], str]] = [
        ({"lossConfig": {"dpo": {"beta": 0.7}}}, "lossConfig.dpo.beta"),
        ({"lossConfig": {"klBeta": 0}}, "lossConfig.klBeta"),
        ({"lossConfig": {"method": "ORPO"}}, "lossConfig.method"),
        ({"lossConfig": {"dpo": {"refCacheBatchSize": 0}}}, "lossConfig.dpo.refCacheBatchSize"),
        ({"trainingConfig": {"baseModel": TINY_MODEL, "warmStartFrom": "x"}}, "trainingConfig.warmStartFrom"),
        (
            {"trainingConfig": {"baseModel": TINY_MODEL, "jinjaTemplate": "{{x}}"}},
            "trainingConfig.jinjaTemplate",
        ),
        ({"trainingConfig": {"baseModel": TINY_MODEL, "region": "US_IOWA_1"}}, "trainingConfig.region"),
        ({"trainingConfig": {}}, "trainingConfig.baseModel"),
        ({"trainingConfig": {"baseModel": TINY_MODEL, "loraRank": 0}}, "hyperparameters"),
        ({"wandbConfig": {"enabled": True}}, "wandbConfig.enabled"),
        ({"trainingConfig": {"baseModel": TINY_MODEL, "epochs": "two"}}, "trainingConfig.epochs"),
        ({"dataset": "missing"}, "training_file"),
    ]
    datasets = f"{server.v1}/accounts/{ACCOUNT}/datasets"
    assert httpx.post(datasets, json={"datasetId": "prefs-2"}).status_code == 200
    assert (
        httpx.post(f"{datasets}/prefs-2:upload", files={"file": ("p.jsonl", jsonl(TRAIN))}).status_code == 200
    )
    for extra, param in fireworks_cases:
        response = httpx.post(jobs, json={**base, **extra})
        assert response.status_code == 400, (extra, response.text)
        assert response.json()["error"]["param"] == param, (extra, response.json())
    assert httpx.get(f"{jobs}/no-such-job").status_code == 404
    assert httpx.get(jobs, params={"pageSize": 0}).status_code == 400
