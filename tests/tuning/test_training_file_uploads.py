"""Uploads end to end on disk and SQLite: streamed multipart, size limit, validation, atomic commit."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from tuning_helpers import good_row

from ember.tuning.file_storage import ConflictError, FileStorage, NotFoundError, UploadRejectedError
from ember.tuning.multipart_upload import (
    InvalidUploadError,
    ReceivedUpload,
    UploadLimits,
    UploadTooLargeError,
    receive_multipart,
    receive_stream,
)
from ember.tuning.store import TuningStore
from ember.tuning.validation import validate_dataset

GOOD = "".join(json.dumps(good_row(answer=f"{i}.")) + "\n" for i in range(3)).encode()
BAD = (json.dumps(good_row()) + "\n" + '{"messages": [{"role": "user", "content": "hi"}]}\n').encode()


def multipart(content: bytes, filename: str = "train.jsonl", **fields: str) -> tuple[str, bytes]:
    """(content type, body) as httpx, a real client, encodes a form with one file."""
    request = httpx.Request("POST", "http://ember/v1/files", files={"file": (filename, content)}, data=fields)
    return request.headers["content-type"], request.read()


def chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def receive(
    content_type: str, body: bytes, incoming: Path, limits: UploadLimits, size: int = 7
) -> ReceivedUpload:
    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks(body, size):
            yield chunk

    return asyncio.run(receive_multipart(content_type, stream(), incoming, limits))


def stored_files(storage: FileStorage) -> list[str]:
    """Every file under the data directory except the database's own."""
    paths = (p.relative_to(storage.data_dir).as_posix() for p in storage.data_dir.rglob("*") if p.is_file())
    return sorted(p for p in paths if not p.startswith("ember.db"))


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    data = tmp_path / "data"
    return FileStorage(
        data, TuningStore(data / "ember.db"), validate_dataset, UploadLimits(max_file_bytes=4096)
    )


def test_multipart_upload_is_streamed_validated_and_committed(storage: FileStorage) -> None:
    content_type, body = multipart(GOOD, purpose="fine-tune")
    upload = receive(content_type, body, storage.incoming_dir, storage.limits)
    assert (upload.filename, upload.bytes, upload.fields) == (
        "train.jsonl",
        len(GOOD),
        {"purpose": "fine-tune"},
    )
    record = storage.create_file(upload, upload.fields["purpose"])
    assert record.id.startswith("file-") and record.status == "processed" and record.example_count == 3
    assert storage.file_path(record).read_bytes() == GOOD
    assert storage.store.get_file(record.id) == record
    assert stored_files(storage) == [record.path]
    deleted = storage.delete_file(record.id)
    assert deleted == record and not storage.file_path(record).exists()
    with pytest.raises(NotFoundError):
        storage.delete_file(record.id)


def test_token_counts_reach_the_row(tmp_path: Path, chatml_counter: Callable[[dict[str, Any]], Any]) -> None:
    data = tmp_path / "data"
    storage = FileStorage(
        data, TuningStore(data / "ember.db"), lambda p: validate_dataset(p, None, chatml_counter)
    )
    record = storage.create_file(
        receive_stream([GOOD], "t.jsonl", storage.incoming_dir, storage.limits), "fine-tune"
    )
    expected = sum(chatml_counter(json.loads(line))[0] for line in GOOD.splitlines())
    assert record.estimated_token_count == expected and record.validation["trainable_token_count"] > 0


def test_oversized_upload_stops_early_and_leaves_nothing(storage: FileStorage) -> None:
    content_type, body = multipart(b"x" * 100_000, purpose="fine-tune")
    consumed = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal consumed
        for chunk in chunks(body, 1024):
            consumed += 1
            yield chunk

    with pytest.raises(UploadTooLargeError, match="over the upload limit of 4096 bytes"):
        asyncio.run(receive_multipart(content_type, stream(), storage.incoming_dir, storage.limits))
    assert consumed <= 6  # aborted at the limit, not after reading the whole body
    assert list(storage.incoming_dir.iterdir()) == []
    with pytest.raises(UploadTooLargeError):
        receive_stream(chunks(b"y" * 5000, 1000), "big.jsonl", storage.incoming_dir, storage.limits)
    assert list(storage.incoming_dir.iterdir()) == []


def test_oversized_form_fields_are_refused(storage: FileStorage) -> None:
    content_type, body = multipart(GOOD, purpose="p" * 100_000)
    with pytest.raises(UploadTooLargeError, match="the text of the form's fields"):
        receive(content_type, body, storage.incoming_dir, storage.limits, size=4096)
    assert list(storage.incoming_dir.iterdir()) == []


def test_rejected_upload_stores_nothing(storage: FileStorage) -> None:
    upload = receive(*multipart(BAD, purpose="fine-tune"), storage.incoming_dir, storage.limits)
    with pytest.raises(UploadRejectedError) as rejected:
        storage.create_file(upload, "fine-tune")
    codes = [(p.line, p.message_index, p.code) for p in rejected.value.report.problems]
    assert codes == [(2, 0, "must_end_with_assistant"), (None, None, "too_few_examples")]
    assert "line 2, messages[0]" in str(rejected.value)
    assert storage.store.list_files() == []
    assert stored_files(storage) == []


def test_unknown_purpose_stores_nothing(storage: FileStorage) -> None:
    upload = receive_stream([GOOD], "t.jsonl", storage.incoming_dir, storage.limits)
    with pytest.raises(ValueError, match="purpose must be one of fine-tune, got 'assistants'"):
        storage.create_file(upload, "assistants")
    assert storage.store.list_files() == [] and list(storage.incoming_dir.iterdir()) == []


def malformed_bodies() -> dict[str, tuple[str, bytes, str]]:
    """(content type, body, expected error) per way a client can get a multipart upload wrong."""
    content_type, body = multipart(GOOD)
    misnamed = httpx.Request("POST", "http://ember/", files={"training_file": ("t.jsonl", GOOD)})
    only_purpose = b'--abc\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--abc--\r\n'
    return {
        "not multipart": ("application/json", b"{}", "expected a multipart/form-data body"),
        "wrong boundary": (content_type, b"--nope\r\n", "malformed multipart body"),
        "no file part": ("multipart/form-data; boundary=abc", only_purpose, "no 'file' file part"),
        "truncated": (content_type, body[:-30], "ended before its closing boundary"),
        "file under another name": (
            misnamed.headers["content-type"],
            misnamed.read(),
            "unexpected file part 'training_file'; send the file as 'file'",
        ),
    }


@pytest.mark.parametrize(
    "content_type, body, message", malformed_bodies().values(), ids=malformed_bodies().keys()
)
def test_malformed_bodies_are_refused(
    storage: FileStorage, content_type: str, body: bytes, message: str
) -> None:
    with pytest.raises(InvalidUploadError, match=message):
        receive(content_type, body, storage.incoming_dir, storage.limits)
    assert list(storage.incoming_dir.iterdir()) == []


def test_a_failed_row_write_removes_the_moved_file(storage: FileStorage) -> None:
    upload = receive_stream([GOOD], "t.jsonl", storage.incoming_dir, storage.limits)
    db = storage.store.db_path
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.mkdir()  # the database can no longer be opened: the row write fails for real
    with pytest.raises(sqlite3.OperationalError):
        storage.create_file(upload, "fine-tune")
    assert list((storage.data_dir / "files").iterdir()) == [] and list(storage.incoming_dir.iterdir()) == []


def test_dataset_create_upload_get_and_delete(storage: FileStorage) -> None:
    dataset = storage.create_dataset("me", "poems", "Poems")
    assert (dataset.name, dataset.state, dataset.path) == ("accounts/me/datasets/poems", "UPLOADING", None)
    with pytest.raises(ConflictError, match="already exists"):
        storage.create_dataset("me", "poems")
    with pytest.raises(ConflictError, match="no uploaded file yet"):
        storage.dataset_path(dataset)
    ready = storage.upload_dataset(
        dataset.name, receive(*multipart(GOOD), storage.incoming_dir, storage.limits)
    )
    assert (ready.state, ready.example_count, ready.filename, ready.bytes) == (
        "READY",
        3,
        "train.jsonl",
        len(GOOD),
    )
    assert (
        storage.dataset_path(ready).read_bytes() == GOOD and storage.store.get_dataset(dataset.name) == ready
    )
    again = receive_stream([GOOD], "t.jsonl", storage.incoming_dir, storage.limits)
    with pytest.raises(ConflictError, match="is READY; a dataset takes one upload"):
        storage.upload_dataset(dataset.name, again)
    assert list(storage.incoming_dir.iterdir()) == []
    assert storage.delete_dataset(dataset.name) == ready and not storage.dataset_path(ready).exists()
    with pytest.raises(NotFoundError):
        storage.upload_dataset(
            dataset.name, receive_stream([GOOD], "t.jsonl", storage.incoming_dir, storage.limits)
        )
    with pytest.raises(ValueError, match="dataset id 'Bad_Id' must be"):
        storage.create_dataset("me", "Bad_Id")


def test_rejected_dataset_upload_leaves_no_dataset(storage: FileStorage) -> None:
    dataset = storage.create_dataset("me", "broken")
    with pytest.raises(UploadRejectedError):
        storage.upload_dataset(dataset.name, receive(*multipart(BAD), storage.incoming_dir, storage.limits))
    assert storage.store.get_dataset(dataset.name) is None
    assert stored_files(storage) == []
    assert storage.create_dataset("me", "broken").state == "UPLOADING"  # the client can retry with fixed data


def test_remove_orphans_keeps_rows_and_fresh_uploads(storage: FileStorage) -> None:
    kept = storage.create_file(
        receive_stream([GOOD], "t.jsonl", storage.incoming_dir, storage.limits), "fine-tune"
    )
    dataset = storage.create_dataset("me", "kept")
    kept_dataset = storage.upload_dataset(
        dataset.name, receive_stream([GOOD], "t.jsonl", storage.incoming_dir, storage.limits)
    )
    stale = [
        storage.data_dir / "files" / "file-crashed.jsonl",
        storage.incoming_dir / "upload-old.part",
        storage.data_dir / "datasets" / "me" / "kept-dead.jsonl",
    ]
    fresh = storage.incoming_dir / "upload-in-flight.part"
    long_ago = time.time() - 7200
    for path in [*stale, fresh]:
        path.write_bytes(b"x")
    for path in [*stale, storage.file_path(kept), storage.dataset_path(kept_dataset)]:
        os.utime(path, (long_ago, long_ago))
    assert sorted(storage.remove_orphans()) == sorted(stale)
    assert fresh.exists() and storage.file_path(kept).exists() and storage.dataset_path(kept_dataset).exists()


def test_a_thin_route_maps_errors_to_http(storage: FileStorage) -> None:
    """The shape the API routes take: stream the request body, commit in a thread, map errors to statuses."""
    app = FastAPI()

    @app.post("/v1/files")
    async def upload(request: Request) -> JSONResponse:
        try:
            received = await storage.receive(request.headers.get("content-type", ""), request.stream())
            record = await asyncio.to_thread(
                storage.create_file, received, received.fields.get("purpose", "")
            )
        except UploadTooLargeError as error:
            return JSONResponse({"error": {"message": str(error)}}, status_code=413)
        except UploadRejectedError as error:
            return JSONResponse({"error": {"message": str(error), "report": error.report.to_dict()}}, 400)
        except ValueError as error:
            return JSONResponse({"error": {"message": str(error)}}, status_code=400)
        return JSONResponse({"id": record.id, "object": "file", "bytes": record.bytes})

    client = TestClient(app)
    ok = client.post("/v1/files", files={"file": ("t.jsonl", GOOD)}, data={"purpose": "fine-tune"})
    assert ok.status_code == 200 and ok.json()["bytes"] == len(GOOD)
    too_big = client.post(
        "/v1/files", files={"file": ("t.jsonl", b"z" * 10_000)}, data={"purpose": "fine-tune"}
    )
    assert too_big.status_code == 413
    rejected = client.post("/v1/files", files={"file": ("t.jsonl", BAD)}, data={"purpose": "fine-tune"})
    assert rejected.status_code == 400
    assert rejected.json()["error"]["report"]["problems"][0]["line"] == 2
    assert [f.id for f in storage.store.list_files()] == [ok.json()["id"]]
    assert list(storage.incoming_dir.iterdir()) == []
    shutil.rmtree(storage.incoming_dir)  # receiving recreates it
    assert (
        client.post("/v1/files", files={"file": ("t.jsonl", GOOD)}, data={"purpose": "fine-tune"}).status_code
        == 200
    )
