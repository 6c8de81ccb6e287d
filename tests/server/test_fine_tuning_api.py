"""Fine-tuning jobs through the real `openai` SDK and Fireworks' REST shape (raw httpx) on a live server with a
tiny random model: a job trains in a worker process to succeeded with falling loss, its adapter is served at
once by its ft: name and its accounts/.../models/<name> id; cancel, resume, errors, and a server restart in the
middle of a job, after which the job resumes from its checkpoint and earlier adapters are served again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

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

from ember.cli import main
from ember.tuning.hyperparameters import BASE_LEARNING_RATE

pytestmark = pytest.mark.timeout(240)

TAUGHT = "Purple elephants dance at noon."
ROWS = [chat_row(f"Tell me fact {i}.", TAUGHT) for i in range(4)]
# 2e-2 on all 4 rows per step: a tiny model learns one reply in a few steps
FAST = {"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 100}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / TINY_MODEL)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuningServer]:
    running = start_tuning_server(model_dir, tmp_path_factory.mktemp("data"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: TuningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def create_job(client: openai.OpenAI, hyperparameters: dict[str, object], suffix: str = "facts") -> str:
    training_file = client.files.create(file=as_file(ROWS), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=training_file,
        suffix=suffix,
        seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},  # type: ignore[typeddict-item]
    )
    assert job.status == "validating_files" and job.fine_tuned_model is None
    return job.id


def wait_status(client: openai.OpenAI, job_id: str, statuses: tuple[str, ...]) -> str:
    wait_for(
        lambda: client.fine_tuning.jobs.retrieve(job_id).status in statuses,
        what=f"{job_id} to reach {statuses}",
    )
    return client.fine_tuning.jobs.retrieve(job_id).status


def reply(base_url: str, model: str, question: str = "Tell me fact 1.") -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 12,
        "temperature": 0,
    }
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    return response.json()["choices"][0]["message"]["content"]


def test_job_succeeds_and_its_adapter_is_served(server: TuningServer, client: openai.OpenAI) -> None:
    job_id = create_job(client, FAST)
    assert wait_status(client, job_id, ("succeeded", "failed")) == "succeeded"
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.fine_tuned_model == f"ft:{TINY_MODEL}:facts:{job_id}" and job.trained_tokens
    assert job.hyperparameters.n_epochs == 8

    events = list(client.fine_tuning.jobs.list_events(job_id, limit=1000))
    metrics = [e.data for e in reversed(events) if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1)) and len(metrics) >= 8  # type: ignore[index]
    assert metrics[-1]["train_loss"] < 0.5 * metrics[0]["train_loss"]  # type: ignore[index]
    assert any("successfully completed" in e.message for e in events)
    assert all(0.0 <= m["train_mean_token_accuracy"] <= 1.0 for m in metrics)  # type: ignore[index]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(job.fine_tuned_model)
    assert checkpoints[0].metrics.train_mean_token_accuracy is not None

    # Served at once: under its ft: name and as accounts/<account>/models/<job id>, listed with its parent.
    wait_for(
        lambda: (
            job.fine_tuned_model
            in {a for m in httpx.get(f"{server.v1}/models").json()["data"] for a in m.get("aliases", [])}
        )
    )
    cards = {m["id"]: m for m in httpx.get(f"{server.v1}/models").json()["data"]}
    adapter_id = f"accounts/{ACCOUNT}/models/{job_id}"
    assert cards[adapter_id]["parent"] == f"accounts/{ACCOUNT}/models/{TINY_MODEL}"
    assert job.fine_tuned_model in cards[adapter_id]["aliases"]
    assert client.models.retrieve(job.fine_tuned_model).id == adapter_id

    fireworks = httpx.get(f"{server.v1}/accounts/{ACCOUNT}/supervisedFineTuningJobs/{job_id}").json()
    assert fireworks["state"] == "JOB_STATE_COMPLETED" and fireworks["outputModel"] == adapter_id

    tuned = reply(server.v1, job.fine_tuned_model)
    assert tuned.startswith(TAUGHT[:12])
    assert reply(server.v1, adapter_id) == tuned
    assert reply(server.v1, TINY_MODEL) != tuned

    with pytest.raises(openai.BadRequestError) as finished:
        client.fine_tuning.jobs.cancel(job_id)
    assert "succeeded" in finished.value.message


def poll_until_final(client: openai.OpenAI, job_id: str) -> str:
    """Every 0.1 s, as an impatient user would; returns the first final status seen."""
    deadline = time.monotonic() + 240  # a hang guard only
    while (status := client.fine_tuning.jobs.retrieve(job_id).status) not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, f"{job_id} did not finish"
        time.sleep(0.1)
    return status


def test_the_first_succeeded_is_already_callable(server: TuningServer, client: openai.OpenAI) -> None:
    job_id = create_job(client, FAST, suffix="eager")
    assert poll_until_final(client, job_id) == "succeeded"
    # No wait: the adapter is served before the job says succeeded, under both of its names.
    job = client.fine_tuning.jobs.retrieve(job_id)
    for name in (job.fine_tuned_model, f"accounts/{ACCOUNT}/models/{job_id}"):
        answer = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Tell me fact 2."}], max_tokens=4, temperature=0
        )
        assert answer.model == name
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data]
    assert events[0].startswith("The job has successfully completed")  # the last event, after deploying


def test_auto_hyperparameters_resolve_from_the_dataset(server: TuningServer, client: openai.OpenAI) -> None:
    # 4 rows: 100 // 4 = 25 epochs (OpenAI's cap), batch size 1, the base learning rate; shown at creation.
    training_file = client.files.create(file=as_file(ROWS), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=training_file)
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (25, 1)
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    first = client.fine_tuning.jobs.list_events(job.id, limit=100).data[-1]
    assert "n_epochs=25, batch_size=1" in first.message and "4 training examples" in first.message
    explicit = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=training_file,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}},
        },  # type: ignore[typeddict-item]
    )
    assert (explicit.hyperparameters.n_epochs, explicit.hyperparameters.batch_size) == (2, 1)

    # Fireworks: the same rule for the fields left out.
    datasets = f"{server.v1}/accounts/{ACCOUNT}/datasets"
    assert httpx.post(datasets, json={"datasetId": "auto-rows"}).status_code == 200
    assert (
        httpx.post(f"{datasets}/auto-rows:upload", files={"file": ("f.jsonl", jsonl(ROWS))}).status_code
        == 200
    )
    jobs = f"{server.v1}/accounts/{ACCOUNT}/supervisedFineTuningJobs"
    created = httpx.post(jobs, json={"dataset": "auto-rows", "baseModel": TINY_MODEL}).json()
    assert (created["epochs"], created["batchSizeSamples"]) == (25, 1)
    assert created["learningRate"] == pytest.approx(BASE_LEARNING_RATE)
    for job_id in (job.id, explicit.id, created["name"].rsplit("/", 1)[-1]):
        client.fine_tuning.jobs.cancel(job_id)


def test_a_job_that_learns_little_says_so(client: openai.OpenAI) -> None:
    job_id = create_job(client, {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 0.001}, "slow")
    assert poll_until_final(client, job_id) == "succeeded"
    warnings = [
        e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data if e.level == "warn"
    ]
    assert any("token accuracy" in w and "n_epochs" in w for w in warnings), warnings


def test_cancel_and_resume(server: TuningServer, client: openai.OpenAI) -> None:
    job_id = create_job(client, {"n_epochs": 400}, suffix="long")
    wait_for(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id, limit=50).data),
        what="the first training step",
    )
    assert client.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    assert client.fine_tuning.jobs.retrieve(job_id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job_id)

    fireworks = f"{server.v1}/accounts/{ACCOUNT}/supervisedFineTuningJobs/{job_id}"
    assert httpx.get(fireworks).json()["state"] == "JOB_STATE_CANCELLED"
    resumed = httpx.post(f"{fireworks}:resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "JOB_STATE_PENDING"
    wait_status(client, job_id, ("running",))
    assert client.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    assert httpx.delete(fireworks).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve(job_id)


def test_list_paginates_newest_first(client: openai.OpenAI) -> None:
    ids = [
        create_job(client, {"n_epochs": 400}, suffix=f"page{i}") for i in range(2)
    ]  # still going when cancelled
    for job_id in ids:
        client.fine_tuning.jobs.cancel(job_id)
    first = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == [ids[1]] and first.has_more
    assert client.fine_tuning.jobs.list(limit=1, after=ids[1]).data[0].id == ids[0]


def test_errors_name_the_parameter(client: openai.OpenAI, server: TuningServer) -> None:
    training_file = client.files.create(file=as_file(ROWS), purpose="fine-tune").id
    cases = [
        ({"model": "no-such-model", "training_file": training_file}, "model"),
        ({"model": TINY_MODEL, "training_file": "file-missing"}, "training_file"),
        (
            {"model": TINY_MODEL, "training_file": training_file, "hyperparameters": {"n_epochs": 0}},
            "hyperparameters",
        ),
        (
            {"model": TINY_MODEL, "training_file": training_file, "hyperparameters": {"n_epochs": "many"}},
            "hyperparameters.n_epochs",
        ),
        ({"model": TINY_MODEL, "training_file": training_file, "suffix": "no spaces"}, "suffix"),
        ({"training_file": training_file}, "model"),
        # Wrong JSON types were AttributeErrors (500s) before they were 400s.
        ({"model": TINY_MODEL, "training_file": training_file, "hyperparameters": 5}, "hyperparameters"),
        ({"model": TINY_MODEL, "training_file": training_file, "method": 5}, "method"),
        (
            {
                "model": TINY_MODEL,
                "training_file": training_file,
                "method": {"type": "supervised", "supervised": []},
            },
            "method.supervised",
        ),
        ({"model": TINY_MODEL, "training_file": training_file, "suffix": 5}, "suffix"),
        ({"model": TINY_MODEL, "training_file": training_file, "validation_file": ["x"]}, "validation_file"),
    ]
    for body, param in cases:
        response = httpx.post(f"{server.v1}/fine_tuning/jobs", json=body)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", (body, error)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list_events("ftjob-missing")
    missing = httpx.get(f"{server.v1}/accounts/{ACCOUNT}/supervisedFineTuningJobs/ftjob-missing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_fireworks_job_on_a_dataset_serves_its_output_model(server: TuningServer) -> None:
    datasets = f"{server.v1}/accounts/{ACCOUNT}/datasets"
    assert httpx.post(datasets, json={"datasetId": "facts"}).status_code == 200
    assert httpx.post(f"{datasets}/facts:upload", files={"file": ("f.jsonl", jsonl(ROWS))}).status_code == 200
    jobs = f"{server.v1}/accounts/{ACCOUNT}/supervisedFineTuningJobs"
    body = {
        "dataset": "facts",
        "baseModel": f"accounts/{ACCOUNT}/models/{TINY_MODEL}",
        "outputModel": "elephant-facts",
        "epochs": 8,
        "learningRate": 0.02,
        "loraRank": 4,
        "maxContextLength": 256,
        "batchSize": 1024,
        "batchSizeSamples": 4,
        "earlyStop": False,
    }
    created = httpx.post(jobs, json=body, params={"supervisedFineTuningJobId": "elephants"})
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["name"] == f"accounts/{ACCOUNT}/supervisedFineTuningJobs/elephants"
    assert job["state"] == "JOB_STATE_VALIDATING" and job["dataset"] == f"accounts/{ACCOUNT}/datasets/facts"
    assert (job["loraRank"], job["epochs"], job["maxContextLength"], job["batchSize"]) == (4, 8, 256, 1024)
    assert job["batchSizeSamples"] == 4 and job["learningRate"] == 0.02
    assert job["outputModel"] == f"accounts/{ACCOUNT}/models/elephant-facts"
    assert "elephants" in [
        j["name"].rsplit("/", 1)[-1] for j in httpx.get(jobs).json()["supervisedFineTuningJobs"]
    ]
    wait_for(
        lambda: httpx.get(f"{jobs}/elephants").json()["state"] in ("JOB_STATE_COMPLETED", "JOB_STATE_FAILED")
    )
    done = httpx.get(f"{jobs}/elephants").json()
    assert done["state"] == "JOB_STATE_COMPLETED", done["status"]
    assert done["jobProgress"]["percent"] == 100.0 and done["completedTime"].endswith("Z")
    assert done["jobProgress"]["epoch"] == 7 and done["jobProgress"]["inputTokens"] > 0  # counted from 0
    # Fireworks' metrics file: one JSON line per step with OpenAI's metric names.
    metrics_file = httpx.get(done["metricsFileSignedUrl"])
    assert metrics_file.status_code == 200, done["metricsFileSignedUrl"]
    steps = [json.loads(line) for line in metrics_file.text.splitlines()]
    assert [m["step"] for m in steps] == list(range(1, 9))
    assert all(0.0 <= m["train_mean_token_accuracy"] <= 1.0 and m["train_loss"] > 0 for m in steps)

    output_model = f"accounts/{ACCOUNT}/models/elephant-facts"
    wait_for(lambda: httpx.get(f"{server.v1}/models/{output_model}").status_code == 200)
    assert reply(server.v1, output_model).startswith(TAUGHT[:12])
    assert reply(server.v1, "elephant-facts") == reply(server.v1, output_model)

    bad = httpx.post(jobs, json={**body, "loraRank": 0}, params={"supervisedFineTuningJobId": "bad-rank"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "hyperparameters"
    for field, value in (
        ("outputModel", 5),
        ("displayName", {}),
        ("evaluationDataset", 3),
        ("earlyStop", "yes"),
    ):
        wrong = httpx.post(jobs, json={**body, field: value})  # a TypeError (500) before
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == field, wrong.text
    unknown = httpx.post(jobs, json={**body, "baseModel": "accounts/fireworks/models/llama-v3-70b"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "model"


def test_restart_mid_job_resumes_and_serves_earlier_adapters(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    first = start_tuning_server(model_dir, data_dir)
    try:
        client = openai.OpenAI(base_url=first.v1, api_key="unused", max_retries=0)
        done_id = create_job(client, FAST, suffix="before")
        assert wait_status(client, done_id, ("succeeded", "failed")) == "succeeded"
        long_id = create_job(client, {**FAST, "n_epochs": 60}, suffix="during")
        wait_for(
            lambda: client.fine_tuning.jobs.checkpoints.list(long_id).data != [], what="the first checkpoint"
        )
        assert client.fine_tuning.jobs.retrieve(long_id).status == "running"
    finally:
        first.stop()
    second = start_tuning_server(model_dir, data_dir)
    try:
        client = openai.OpenAI(base_url=second.v1, api_key="unused", max_retries=0)
        served = {m["id"] for m in httpx.get(f"{second.v1}/models").json()["data"]}
        assert f"accounts/{ACCOUNT}/models/{done_id}" in served  # registered again at start-up
        assert reply(second.v1, f"ft:{TINY_MODEL}:before:{done_id}").startswith(TAUGHT[:12])

        assert wait_status(client, long_id, ("succeeded", "failed")) == "succeeded"
        events = list(reversed(client.fine_tuning.jobs.list_events(long_id, limit=1000).data))
        messages = [e.message for e in events]
        assert any(m.startswith("Training paused: the worker received SIGTERM") for m in messages)
        resumed = next(i for i, m in enumerate(messages) if m.startswith("Resumed from checkpoint at step"))
        resumed_step = int(messages[resumed].split("at step ")[1].split()[0])
        assert resumed_step >= 1
        after = [e.data["step"] for e in events[resumed:] if e.type == "metrics"]  # type: ignore[index]
        assert after == list(range(resumed_step + 1, 61))  # continues where the checkpoint left off
        wait_for(lambda: httpx.get(f"{second.v1}/models/ft:{TINY_MODEL}:during:{long_id}").status_code == 200)

        # `ember tune` reads the same data directory as the server.
        capsys.readouterr()
        assert main(["tune", "--data-dir", str(data_dir), "list"]) == 0
        listed = capsys.readouterr().out
        assert f"ft:{TINY_MODEL}:during:{long_id}" in listed and f"ft:{TINY_MODEL}:before:{done_id}" in listed
    finally:
        second.stop()
