"""OpenAI's Batch API through the real `openai` SDK, and Fireworks' batchInferenceJobs through the real
fireworks-ai SDK, on a live server with a data directory (tiny random model: only equality with the live route
matters, not the content): output lines match the live route's answer to the same greedy body, bad lines go to
the error file, a cancel keeps the finished lines, a restarted server resumes a batch, and live requests are
served while a batch runs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
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
    jsonl,
    start_tuning_server,
    wait_for,
    write_tiny_model,
)
from live_server import RunningServer

from ember.server.batches.store import DB_FILE, BatchStore
from ember.server.common.preparation import Preparation

pytestmark = pytest.mark.timeout(180)

FINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, question: str, max_tokens: int = 8, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": TINY_MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
            **body,
        },
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("batch-model") / "tiny-llama")


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuningServer]:
    running = start_tuning_server(model_dir, tmp_path_factory.mktemp("batch-data"))
    yield running
    running.stop()


def client_of(server: TuningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def preparation_of(server: TuningServer) -> Preparation:
    return server._server.config.app.state.services.state.preparation  # type: ignore[attr-defined]


class PreparationGate:
    """Lets the first `open_for` preparations through, then holds the rest until released: the batch stops
    after a known number of finished requests."""

    def __init__(self, open_for: int) -> None:
        self.left = open_for
        self.lock = threading.Lock()
        self.released = threading.Event()

    def __call__(self) -> None:
        with self.lock:
            self.left -= 1
            held = self.left < 0
        if held:
            self.released.wait(60)


def finished(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...] = FINAL) -> Any:
    wait_for(lambda: client.batches.retrieve(batch_id).status in statuses, 120, f"batch {batch_id} to finish")
    return client.batches.retrieve(batch_id)


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_chat_batch_output_matches_the_live_route_and_bad_lines_go_to_the_error_file(
    server: TuningServer,
) -> None:
    client = client_of(server)
    lines = [
        chat_line("q-0", "Name a colour."),
        chat_line("q-1", "Count to three.", max_tokens=12),
        chat_line("bad-max-tokens", "Hi", max_tokens=-1),
        chat_line("bad-model", "Hi", model="no-such-model"),
        chat_line("streamed", "Hi", stream=True),
        chat_line("mirostat", "Hi", mirostat=2),  # a field the live route refuses: refused here too
        chat_line("q-2", "Say hello.", max_tokens=5),
    ]
    upload = client.files.create(file=as_file(lines, "requests.jsonl"), purpose="batch")
    assert upload.purpose == "batch"
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "eval-1"},
    )
    assert batch.object == "batch" and batch.status in ("validating", "in_progress")
    assert batch.request_counts is not None and batch.request_counts.total == 7
    assert batch.expires_at == batch.created_at + 24 * 3600 and batch.metadata == {"job": "eval-1"}

    # a live request while the batch runs is served
    live = client.chat.completions.create(
        model=TINY_MODEL, messages=[{"role": "user", "content": "Live?"}], max_tokens=4, temperature=0
    )
    assert live.choices[0].finish_reason in ("stop", "length")

    done = finished(client, batch.id)
    assert done.status == "completed" and done.completed_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 4)
    assert done.usage is not None and done.usage.output_tokens > 0

    outputs = {row["custom_id"]: row for row in file_lines(client, done.output_file_id)}
    assert list(outputs) == ["q-0", "q-1", "q-2"]  # in input order
    for line in lines:
        if line["custom_id"] not in outputs:
            continue
        row = outputs[line["custom_id"]]
        assert row["error"] is None and row["response"]["status_code"] == 200
        answer = client.chat.completions.create(**line["body"])
        batched = row["response"]["body"]
        assert batched["object"] == "chat.completion"
        assert batched["choices"][0]["message"]["content"] == answer.choices[0].message.content
        assert batched["usage"]["completion_tokens"] == answer.usage.completion_tokens  # type: ignore[union-attr]

    errors = {row["custom_id"]: row for row in file_lines(client, done.error_file_id)}
    assert list(errors) == ["bad-max-tokens", "bad-model", "streamed", "mirostat"]
    assert errors["streamed"]["response"]["body"]["error"]["param"] == "stream"
    assert errors["mirostat"]["response"]["body"]["error"]["param"] == "mirostat"
    too_few = errors["bad-max-tokens"]["response"]
    assert too_few["status_code"] == 400 and too_few["body"]["error"]["param"] == "max_tokens"
    unknown = errors["bad-model"]["response"]
    assert unknown["status_code"] == 404 and unknown["body"]["error"]["code"] == "model_not_found"
    output_file = client.files.retrieve(done.output_file_id)  # type: ignore[arg-type]
    assert output_file.purpose == "batch_output"  # type: ignore[comparison-overlap]


def test_completion_and_embedding_batches_match_the_live_routes(server: TuningServer) -> None:
    client = client_of(server)
    body = {"model": TINY_MODEL, "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}
    completions = [{"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": body}]
    text = {"model": TINY_MODEL, "input": ["a red fox", "a blue whale"]}
    embeddings = [{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": text}]
    batches = {}
    for name, rows, endpoint in (
        ("c", completions, "/v1/completions"),
        ("e", embeddings, "/v1/embeddings"),
    ):
        upload = client.files.create(file=as_file(rows), purpose="batch")
        batches[name] = client.batches.create(
            input_file_id=upload.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
        ).id
    (completion,) = file_lines(client, finished(client, batches["c"]).output_file_id)
    live = client.completions.create(**body)
    assert completion["response"]["body"]["choices"][0]["text"] == live.choices[0].text
    (embedding,) = file_lines(client, finished(client, batches["e"]).output_file_id)
    vectors = [item["embedding"] for item in embedding["response"]["body"]["data"]]
    expected = [item.embedding for item in client.embeddings.create(**text).data]
    assert len(vectors) == len(expected) == 2
    for vector, live_vector in zip(vectors, expected, strict=True):
        assert vector == pytest.approx(live_vector, abs=1e-5)


def test_bad_batch_files_and_bodies_are_400s_naming_the_problem(server: TuningServer) -> None:
    client = client_of(server)
    bad_rows = [
        chat_line("same", "Hi"),
        chat_line("same", "Hi again"),
        {**chat_line("x", "Hi"), "method": "GET"},
        {**chat_line("y", "Hi"), "url": "/v1/responses"},
        {**chat_line("z", "Hi"), "body": "not an object"},
        "{not json",
    ]
    with pytest.raises(openai.BadRequestError) as rejected:
        client.files.create(file=as_file(bad_rows), purpose="batch")
    error = rejected.value.body
    assert error["param"] == "line 2" and "also on line 1" in error["message"]  # type: ignore[index]
    problems = {p["line"]: p["code"] for p in error["validation"]["problems"]}  # type: ignore[index]
    assert problems == {
        2: "duplicate_custom_id",
        3: "invalid_method",
        4: "invalid_url",
        5: "invalid_body",
        6: "invalid_json",
    }

    mixed = client.files.create(
        file=as_file([chat_line("a", "Hi"), {**chat_line("b", "Hi"), "url": "/v1/completions"}]),
        purpose="batch",
    )
    with pytest.raises(openai.BadRequestError) as wrong_endpoint:
        client.batches.create(
            input_file_id=mixed.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "line 2" in wrong_endpoint.value.message
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(
            input_file_id=mixed.id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    assert window.value.body["param"] == "completion_window"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as endpoint:
        client.batches.create(input_file_id=mixed.id, endpoint="/v1/responses", completion_window="24h")
    assert endpoint.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as expiry:
        client.batches.create(
            input_file_id=mixed.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 3600},
        )
    assert expiry.value.body["param"] == "output_expires_after"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as metadata:
        client.batches.create(
            input_file_id=mixed.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={f"k{i}": "v" for i in range(17)},
        )
    assert metadata.value.body["param"] == "metadata"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/completions", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    with pytest.raises(openai.BadRequestError) as listing:
        client.batches.list(limit=0)
    assert listing.value.body["param"] == "limit"  # type: ignore[index]
    assert client.models.list().data  # the server keeps serving


def test_batches_list_newest_first_with_cursor_pagination(server: TuningServer) -> None:
    client = client_of(server)
    upload = client.files.create(file=as_file([chat_line("one", "Hi", max_tokens=1)]), purpose="batch")
    ids = [
        client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    assert ids[::-1] == [b.id for b in client.batches.list(limit=100) if b.id in ids]
    with pytest.raises(openai.BadRequestError) as cursor:
        client.batches.list(after="batch_unknown")
    assert cursor.value.body["param"] == "after"  # type: ignore[index]
    assert client.batches.retrieve(ids[0]).model == TINY_MODEL
    for batch_id in ids:
        finished(client, batch_id)


def test_cancel_keeps_the_finished_lines(server: TuningServer) -> None:
    client = client_of(server)
    lines = [chat_line(f"r{i}", f"Question {i}", max_tokens=4) for i in range(8)]
    upload = client.files.create(file=as_file(lines), purpose="batch")
    gate = PreparationGate(open_for=2)
    preparation_of(server).on_start = gate
    try:
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed == 2, 60, "two lines")  # type: ignore[union-attr]
        # a batch queued behind the held one is cancelled at once, without waiting for its turn
        queued = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        client.batches.cancel(queued.id)
        closed = finished(client, queued.id)
        assert closed.status == "cancelled" and closed.output_file_id is None
        assert len(file_lines(client, closed.error_file_id)) == 8
        assert client.batches.retrieve(batch.id).status == "in_progress"
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
        done = finished(client, batch.id)
    finally:
        gate.released.set()
        preparation_of(server).on_start = None
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (8, 2, 0)
    kept = file_lines(client, done.output_file_id)
    assert [row["custom_id"] for row in kept] == ["r0", "r1"]
    assert all(row["response"]["status_code"] == 200 for row in kept)
    unrun = file_lines(client, done.error_file_id)
    assert [row["custom_id"] for row in unrun] == [f"r{i}" for i in range(2, 8)]
    assert {row["error"]["code"] for row in unrun} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(
            finished(
                client,
                client.batches.create(
                    input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
                ).id,
            ).id
        )


def test_a_restarted_server_resumes_a_batch_and_keeps_its_finished_lines(
    model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = start_tuning_server(model_dir, data_dir)
    gate = PreparationGate(open_for=2)
    lines = [chat_line(f"r{i}", f"Question {i}", max_tokens=4) for i in range(6)]
    try:
        client = client_of(first)
        upload = client.files.create(file=as_file(lines), purpose="batch")
        preparation_of(first).on_start = gate
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed == 2, 60, "two lines")  # type: ignore[union-attr]
    finally:
        first.stop()
        gate.released.set()
    before = {
        line.custom_id: line.result for line in BatchStore(data_dir / DB_FILE).lines(batch.id) if line.result
    }
    assert sorted(before) == ["r0", "r1"]

    second = start_tuning_server(model_dir, data_dir)
    try:
        client = client_of(second)
        done = finished(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
        rows = file_lines(client, done.output_file_id)
        assert [row["custom_id"] for row in rows] == [f"r{i}" for i in range(6)]
        for row in rows[:2]:  # kept from before the restart, not run again
            assert row["response"]["request_id"] == before[row["custom_id"]]["request_id"]
    finally:
        second.stop()


def test_fireworks_batch_inference_job_over_datasets(server: TuningServer) -> None:
    base = f"{server.v1}/accounts/{ACCOUNT}/datasets"
    rows = [
        {"custom_id": "fw-0", "body": {"messages": [{"role": "user", "content": "Tell me a joke"}]}},
        {"custom_id": "fw-1", "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}},
        {"custom_id": "fw-bad", "body": {"messages": "not a list"}},
    ]
    assert httpx.post(base, json={"datasetId": "bij-input", "dataset": {}}).status_code == 200
    uploaded = httpx.post(f"{base}/bij-input:upload", files={"file": ("rows.jsonl", jsonl(rows))})
    assert uploaded.status_code == 200, uploaded.text

    client = fireworks.Fireworks(base_url=server.url, api_key="unused", account_id=ACCOUNT, max_retries=0)
    job = client.batch_inference_jobs.create(
        batch_inference_job_id="bij-one",
        model=TINY_MODEL,
        input_dataset_id="bij-input",
        output_dataset_id="bij-output",
        inference_parameters={"max_tokens": 6, "temperature": 0},
        display_name="jokes",
    )
    assert job.name == f"accounts/{ACCOUNT}/batchInferenceJobs/bij-one" and job.display_name == "jokes"
    wait_for(
        lambda: client.batch_inference_jobs.get("bij-one").state == "JOB_STATE_COMPLETED", 120, "the job"
    )
    done = client.batch_inference_jobs.get("bij-one")
    progress = done.job_progress
    assert progress is not None
    assert (
        progress.total_input_requests,
        progress.successfully_processed_requests,
        progress.failed_requests,
    ) == (
        3,
        2,
        1,
    )
    assert done.output_dataset_id == f"accounts/{ACCOUNT}/datasets/bij-output"
    dataset = httpx.get(f"{base}/bij-output").json()
    assert dataset["state"] == "READY" and dataset["exampleCount"] == "3"
    download = client.datasets.get_download_endpoint("bij-output")  # the SDK's way to read a dataset
    [(filename, url)] = download.filename_to_signed_urls.items()  # type: ignore[union-attr]
    assert filename == "BIJ_results.jsonl"
    rows_text = httpx.get(url, timeout=30).text
    results = {row["custom_id"]: row for row in map(json.loads, rows_text.splitlines())}
    assert list(results) == ["fw-0", "fw-1", "fw-bad"]
    assert results["fw-bad"]["response"]["status_code"] == 400
    live = client_of(server).chat.completions.create(
        model=TINY_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
    )
    assert (
        results["fw-1"]["response"]["body"]["choices"][0]["message"]["content"]
        == live.choices[0].message.content
    )
    assert results["fw-0"]["response"]["body"]["usage"]["completion_tokens"] <= 6  # the job's maxTokens

    # a job continuing bij-one runs only the request that did not succeed there
    again = client.batch_inference_jobs.create(
        batch_inference_job_id="bij-again",
        continued_from_job_name=f"accounts/{ACCOUNT}/batchInferenceJobs/bij-one",
    )
    assert again.continued_from_job_name.endswith("/bij-one") and again.model == TINY_MODEL  # type: ignore[union-attr]
    wait_for(
        lambda: client.batch_inference_jobs.get("bij-again").state == "JOB_STATE_COMPLETED", 60, "the rerun"
    )
    rerun = client.batch_inference_jobs.get("bij-again").job_progress
    assert rerun is not None and (rerun.total_input_requests, rerun.failed_requests) == (1, 1)
    with pytest.raises(fireworks.BadRequestError):  # a continued job keeps the first job's parameters
        client.batch_inference_jobs.create(continued_from_job_name="bij-one", inference_parameters={"n": 2})
    with pytest.raises(fireworks.BadRequestError):  # neither a model nor a job to continue
        client.batch_inference_jobs.create(input_dataset_id="bij-input")
    client.batch_inference_jobs.delete("bij-again")

    second = client.batch_inference_jobs.create(
        batch_inference_job_id="bij-two",
        model=TINY_MODEL,
        input_dataset_id=f"accounts/{ACCOUNT}/datasets/bij-input",
    )
    assert second.output_dataset_id == f"accounts/{ACCOUNT}/datasets/bij-two-output"  # the default name
    pages = client.batch_inference_jobs.list(page_size=1)  # oldest first, one per page, through pageToken
    assert len(pages.batch_inference_jobs) == 1 and pages.next_page_token
    assert [j.name.rsplit("/", 1)[-1] for j in pages] == ["bij-one", "bij-two"]  # type: ignore[union-attr]
    client.batch_inference_jobs.delete("bij-two")
    with pytest.raises(fireworks.BadRequestError):
        client.batch_inference_jobs.create(model=TINY_MODEL, input_dataset_id="bij-input", precision="FP8")
    with pytest.raises(fireworks.NotFoundError):
        client.batch_inference_jobs.create(model=TINY_MODEL, input_dataset_id="no-such-dataset")
    client.batch_inference_jobs.delete("bij-one")
    with pytest.raises(fireworks.NotFoundError):
        client.batch_inference_jobs.get("bij-one")
    assert httpx.get(f"{base}/bij-output").status_code == 200  # the results outlive the job


def test_a_server_without_a_data_directory_says_batches_need_one(tiny_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=tiny_server.openai_base, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.list()
    assert "--data-dir" in missing.value.message
    response = httpx.get(f"{tiny_server.url}/v1/accounts/fireworks/batchInferenceJobs")
    assert response.status_code == 404 and response.json()["error"]["code"] == "fine_tuning_disabled"
