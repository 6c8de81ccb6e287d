"""OpenAI files (through the real `openai` SDK) and Fireworks datasets (raw httpx) on a live server: uploads are
validated with the served model's chat template, rejected ones report line and message index and leave nothing
behind, and uploads have their own size limit (413) above the JSON body limit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fine_tuning_server import (
    ACCOUNT,
    TuningServer,
    as_file,
    chat_row,
    jsonl,
    start_tuning_server,
    write_tiny_model,
)

pytestmark = pytest.mark.timeout(120)

GOOD_ROWS = [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(4)]
BAD_ROWS = [
    chat_row("Fine?", "Fine."),
    "{not json",
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep"}]},
    chat_row("Also fine?", "Yes."),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuningServer]:
    root = tmp_path_factory.mktemp("files")
    running = start_tuning_server(write_tiny_model(root / "tiny-llama"), root / "data")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: TuningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def stored_files(server: TuningServer) -> list[Path]:
    return sorted(
        p
        for folder in ("files", "incoming", "datasets")
        for p in (server.data_dir / folder).rglob("*")
        if p.is_file()
    )


def test_file_upload_list_get_content_delete(server: TuningServer, client: openai.OpenAI) -> None:
    created = client.files.create(file=as_file(GOOD_ROWS), purpose="fine-tune")
    assert created.id.startswith("file-") and created.object == "file"
    assert created.purpose == "fine-tune" and created.filename == "train.jsonl"
    assert created.bytes == len(jsonl(GOOD_ROWS)) and created.status == "processed"

    assert created.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(created.id).bytes == created.bytes
    assert client.files.content(created.id).read() == jsonl(GOOD_ROWS)

    deleted = client.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve(created.id)
    assert missing.value.body["message"] == f"no file {created.id!r}"  # type: ignore[index]
    assert created.id not in [f.id for f in client.files.list()]


def test_list_files_paginates_newest_first(server: TuningServer, client: openai.OpenAI) -> None:
    ids = [client.files.create(file=as_file(GOOD_ROWS), purpose="fine-tune").id for _ in range(3)]
    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    second = client.files.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    for file_id in ids:
        client.files.delete(file_id)


def test_rejected_upload_reports_line_and_message_index_and_stores_nothing(
    server: TuningServer, client: openai.OpenAI
) -> None:
    before = stored_files(server)
    listed = [f.id for f in client.files.list()]
    with pytest.raises(openai.BadRequestError) as rejected:
        client.files.create(file=as_file(BAD_ROWS), purpose="fine-tune")
    error = rejected.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_file" and error["param"] == "line 2"
    where = [
        (p["line"], p["message_index"]) for p in error["validation"]["problems"] if p["severity"] == "error"
    ]
    assert where == [(2, None), (3, 1)]
    assert "robot" in error["validation"]["problems"][1]["message"]
    assert stored_files(server) == before and [f.id for f in client.files.list()] == listed


def test_too_few_examples_and_wrong_purpose_are_400s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as few:
        client.files.create(file=as_file(GOOD_ROWS[:2]), purpose="fine-tune")
    problems = few.value.body["validation"]["problems"]  # type: ignore[index]
    assert problems[0]["line"] is None and "3" in problems[0]["message"]
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=as_file(GOOD_ROWS), purpose="assistants")
    assert purpose.value.body["param"] == "purpose"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as not_batch:  # SFT rows are not batch requests
        client.files.create(file=as_file(GOOD_ROWS), purpose="batch")
    assert not_batch.value.body["param"] == "line 1"  # type: ignore[index]


def test_uploads_have_their_own_size_limit(server: TuningServer, client: openai.OpenAI) -> None:
    # Above the 20 kB JSON body limit but under the 200 kB upload limit: accepted.
    big_rows = [chat_row(f"Question {i}? " + "pad " * 200, f"Answer {i}.") for i in range(40)]
    assert 20_000 < len(jsonl(big_rows)) < 200_000
    accepted = client.files.create(file=as_file(big_rows), purpose="fine-tune")
    client.files.delete(accepted.id)

    before = stored_files(server)
    huge_rows = [chat_row("Question? " + "pad " * 1000, "Answer.") for _ in range(60)]
    with pytest.raises(openai.APIStatusError) as too_large:
        client.files.create(file=as_file(huge_rows), purpose="fine-tune")
    assert too_large.value.status_code == 413
    assert stored_files(server) == before

    # The same limit holds for a chunked body that declares no length (checked while streaming).
    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n'
        for _ in range(30):
            yield b"x" * 10_000

    response = httpx.post(
        f"{server.v1}/files", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"
    assert stored_files(server) == before

    # JSON routes keep the small body limit.
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * 30_000}]}
    assert httpx.post(f"{server.v1}/chat/completions", json=body).status_code == 413


def test_fireworks_dataset_lifecycle(server: TuningServer) -> None:
    base = f"{server.v1}/accounts/{ACCOUNT}/datasets"
    created = httpx.post(base, json={"datasetId": "greetings", "dataset": {"displayName": "Greetings"}})
    assert created.status_code == 200, created.text
    dataset = created.json()
    assert dataset["name"] == f"accounts/{ACCOUNT}/datasets/greetings" and dataset["state"] == "UPLOADING"
    assert dataset["displayName"] == "Greetings" and dataset["exampleCount"] == "0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", dataset["createTime"])
    again = httpx.post(base, json={"datasetId": "greetings"})
    assert again.status_code == 409

    uploaded = httpx.post(f"{base}/greetings:upload", files={"file": ("train.jsonl", jsonl(GOOD_ROWS))})
    assert uploaded.status_code == 200, uploaded.text
    ready = httpx.get(f"{base}/greetings").json()
    assert ready["state"] == "READY" and ready["exampleCount"] == "4"
    assert ready["estimatedTokenCount"].isdigit() and int(ready["estimatedTokenCount"]) > 4 * 10
    assert [d["name"] for d in httpx.get(base).json()["datasets"]] == [ready["name"]]
    second = httpx.post(f"{base}/greetings:upload", files={"file": ("train.jsonl", jsonl(GOOD_ROWS))})
    assert second.status_code == 409

    assert httpx.delete(f"{base}/greetings").status_code == 200
    gone = httpx.get(f"{base}/greetings")
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "invalid_request_error"


def test_rejected_dataset_upload_leaves_no_dataset(server: TuningServer) -> None:
    base = f"{server.v1}/accounts/{ACCOUNT}/datasets"
    before = stored_files(server)
    assert httpx.post(base, json={"datasetId": "broken"}).status_code == 200
    rejected = httpx.post(f"{base}/broken:upload", files={"file": ("bad.jsonl", jsonl(BAD_ROWS))})
    assert rejected.status_code == 400
    problems = rejected.json()["error"]["validation"]["problems"]
    assert [(p["line"], p["message_index"]) for p in problems] == [(2, None), (3, 1)]
    assert httpx.get(f"{base}/broken").status_code == 404
    assert stored_files(server) == before
    missing = httpx.post(f"{base}/never-created:upload", files={"file": ("a.jsonl", jsonl(GOOD_ROWS))})
    assert missing.status_code == 404
    bad_id = httpx.post(base, json={"datasetId": "Not Valid"})
    assert bad_id.status_code == 400 and "dataset id" in bad_id.json()["error"]["message"]
