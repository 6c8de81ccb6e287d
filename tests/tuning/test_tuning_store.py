"""The SQLite store on a real db file: rows round-trip, pagination, atomic job updates, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ember.tuning.job_store import JobRecord
from ember.tuning.store import TuningStore
from ember.tuning.tuning_db import SCHEMA_VERSION, StoreConflictError, new_id
from ember.tuning.upload_store import DatasetRecord, FileRecord


def make_file(file_id: str, created_at: int = 1_700_000_000) -> FileRecord:
    return FileRecord(
        id=file_id,
        bytes=123,
        created_at=created_at,
        filename="train.jsonl",
        purpose="fine-tune",
        status="processed",
        path=f"files/{file_id}.jsonl",
        example_count=3,
        estimated_token_count=90,
        validation={"ok": True, "problems": []},
    )


def make_job(job_id: str, created_at: int = 1_700_000_000, status: str = "queued") -> JobRecord:
    return JobRecord(
        id=job_id,
        status=status,
        model="SmolLM2-135M-Instruct",
        training_file="file-a",
        created_at=created_at,
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": "auto"},
        suffix="poet",
        seed=7,
    )


def test_schema_wal_mode_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ember.db"
    store = TuningStore(db)
    store.insert_file(make_file("file-1"))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"files", "datasets", "jobs", "job_events"} <= tables
    assert TuningStore(db).get_file("file-1") == make_file("file-1")


def test_files_round_trip_list_and_delete(tmp_path: Path) -> None:
    store = TuningStore(tmp_path / "ember.db")
    for i in range(5):
        store.insert_file(make_file(f"file-{i}", created_at=1000 + i // 2))  # ties on created_at
    with pytest.raises(StoreConflictError):
        store.insert_file(make_file("file-0"))
    newest_first = [f.id for f in store.list_files()]
    assert newest_first == ["file-4", "file-3", "file-2", "file-1", "file-0"]
    assert [f.id for f in store.list_files(limit=2)] == ["file-4", "file-3"]
    assert [f.id for f in store.list_files(after="file-3", limit=2)] == ["file-2", "file-1"]
    assert [f.id for f in store.list_files(after="file-1")] == ["file-0"]
    assert store.list_files(purpose="batch") == []
    with pytest.raises(ValueError, match="unknown pagination cursor"):
        store.list_files(after="file-x")
    assert store.delete_file("file-2") == make_file("file-2", created_at=1001)
    assert store.delete_file("file-2") is None
    assert store.get_file("file-2") is None


def test_datasets_upload_completes_once(tmp_path: Path) -> None:
    store = TuningStore(tmp_path / "ember.db")
    name = "accounts/me/datasets/poems"
    record = DatasetRecord(name, "me", "poems", "Poems", "CHAT", "UPLOADING", 10.0, 10.0)
    store.insert_dataset(record)
    ready = store.complete_dataset_upload(
        name, filename="p.jsonl", bytes=42, path="datasets/me/poems-1.jsonl", example_count=3
    )
    assert ready is not None and ready.state == "READY" and ready.example_count == 3 and ready.bytes == 42
    assert ready.update_time > 10.0
    assert store.complete_dataset_upload(name, filename="again.jsonl") is None
    assert store.get_dataset(name) == ready
    assert [d.name for d in store.list_datasets("me")] == [name] and store.list_datasets("you") == []
    with pytest.raises(ValueError, match="cannot update dataset upload field"):
        store.complete_dataset_upload(name, state="UPLOADING")
    with pytest.raises(ValueError, match="unknown dataset state"):
        store.insert_dataset(
            DatasetRecord("accounts/me/datasets/x", "me", "x", "x", "CHAT", "DONE", 1.0, 1.0)
        )
    assert store.delete_dataset(name, only_state="UPLOADING") is None
    assert store.delete_dataset(name) == ready


def test_job_updates_are_conditional_and_checked(tmp_path: Path) -> None:
    store = TuningStore(tmp_path / "ember.db")
    store.insert_job(make_job("ftjob-1"))
    assert store.update_job("ftjob-1", status="running", started_at=5, expect_status=("queued",))
    # A second worker trying to claim the same job loses.
    assert not store.update_job("ftjob-1", status="running", expect_status=("queued",))
    assert store.update_job("ftjob-1", status="cancelled", finished_at=9)
    # The worker finishing late must not overwrite the cancel.
    assert not store.update_job("ftjob-1", status="succeeded", expect_status=("running",))
    job = store.get_job("ftjob-1")
    assert job is not None and (job.status, job.started_at, job.finished_at) == ("cancelled", 5, 9)
    assert job.hyperparameters == {"n_epochs": 3, "learning_rate_multiplier": "auto"} and job.metadata == {}
    store.update_job("ftjob-1", error={"message": "out of memory", "param": None}, trained_tokens=10)
    assert store.get_job("ftjob-1").error == {"message": "out of memory", "param": None}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown job status 'done'"):
        store.update_job("ftjob-1", status="done")
    with pytest.raises(ValueError, match="cannot update job field"):
        store.update_job("ftjob-1", created_at=1)
    assert not store.update_job("ftjob-missing", status="failed")


def test_jobs_list_newest_first_and_by_status(tmp_path: Path) -> None:
    store = TuningStore(tmp_path / "ember.db")
    for i, status in enumerate(["queued", "running", "queued", "succeeded"]):
        store.insert_job(make_job(f"ftjob-{i}", created_at=100 + i, status=status))
    assert [j.id for j in store.list_jobs(limit=3)] == ["ftjob-3", "ftjob-2", "ftjob-1"]
    assert [j.id for j in store.list_jobs(after="ftjob-1")] == ["ftjob-0"]
    assert [j.id for j in store.list_jobs_with_status(("queued", "running"))] == [
        "ftjob-0",
        "ftjob-1",
        "ftjob-2",
    ]


def test_events_append_list_and_cascade(tmp_path: Path) -> None:
    store = TuningStore(tmp_path / "ember.db")
    store.insert_job(make_job("ftjob-1"))
    store.add_job_event("ftjob-1", "Job started")
    metrics = store.add_job_event(
        "ftjob-1", "Step 1/10", type="metrics", data={"step": 1, "train_loss": 2.5, "valid_loss": None}
    )
    store.add_job_event("ftjob-1", "Disk is slow", level="warn")
    assert metrics.seq == 2 and metrics.data == {"step": 1, "train_loss": 2.5, "valid_loss": None}
    assert [e.seq for e in store.list_job_events("ftjob-1")] == [1, 2, 3]
    assert [e.seq for e in store.list_job_events("ftjob-1", after_seq=1, limit=1)] == [2]
    assert [e.seq for e in store.list_job_events("ftjob-1", newest_first=True, limit=2)] == [3, 2]
    assert [e.seq for e in store.list_job_events("ftjob-1", before_seq=2, newest_first=True)] == [1]
    assert [e.seq for e in store.list_job_events("ftjob-1", after_seq=1, before_seq=3)] == [2]
    assert store.list_job_events("ftjob-1")[1].type == "metrics"
    with pytest.raises(LookupError, match="no fine-tuning job 'ftjob-2'"):
        store.add_job_event("ftjob-2", "orphan")
    with pytest.raises(ValueError, match="unknown event level"):
        store.add_job_event("ftjob-1", "x", level="debug")
    assert store.delete_job("ftjob-1") is not None
    assert store.list_job_events("ftjob-1") == []


def test_new_ids_are_distinct() -> None:
    ids = {new_id("file") for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("file-") and len(i) == 29 for i in ids)


_WRITER = textwrap.dedent(
    """
    import sys
    from ember.tuning.store import TuningStore
    from ember.tuning.upload_store import FileRecord
    store = TuningStore(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # start together with the threads
    for i in range(int(sys.argv[3])):
        store.add_job_event("ftjob-shared", f"{sys.argv[2]} {i}")
        store.insert_file(FileRecord(f"file-{sys.argv[2]}-{i}", 1, i, "f.jsonl", "fine-tune", "processed", "p"))
    """
)


def test_two_threads_and_a_process_write_concurrently(tmp_path: Path) -> None:
    db = tmp_path / "ember.db"
    store = TuningStore(db)
    store.insert_job(make_job("ftjob-shared"))
    per_writer = 40
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), "proc", str(per_writer)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    assert process.stdout.readline().strip() == "ready"
    errors: list[BaseException] = []
    go = threading.Event()  # the threads start writing when the process does, not before it

    def write(writer: str) -> None:
        try:
            own = TuningStore(
                db
            )  # as a second handler or worker would: its own store object on the same file
            go.wait()
            for i in range(per_writer):
                own.add_job_event("ftjob-shared", f"{writer} {i}")
                own.insert_file(make_file(f"file-{writer}-{i}", created_at=i))
                own.update_job("ftjob-shared", trained_tokens=i)
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(f"thread{t}",)) for t in range(2)]
    for thread in threads:
        thread.start()
    go.set()
    process.stdin.write("go\n")
    process.stdin.close()
    for thread in threads:
        thread.join()
    assert process.wait(timeout=60) == 0
    assert errors == []
    events = store.list_job_events("ftjob-shared", limit=1000)
    assert [e.seq for e in events] == list(range(1, 3 * per_writer + 1))
    for writer in ("thread0", "thread1", "proc"):
        mine = [int(e.message.split()[1]) for e in events if e.message.split()[0] == writer]
        assert mine == list(range(per_writer))  # each writer's events in its own order, none lost
    assert len(store.list_files(limit=1000)) == 3 * per_writer


def test_a_version_2_db_gets_job_methods_and_lists_by_method(tmp_path: Path) -> None:
    db = tmp_path / "tuning.db"
    store = TuningStore(db)
    store.insert_job(make_job("ftjob-old"))
    with sqlite3.connect(db) as conn:  # back to the version-2 table: no method column
        conn.executescript(
            "CREATE TABLE old_jobs AS SELECT * FROM jobs; DROP TABLE jobs; DROP INDEX IF EXISTS jobs_by_method;"
            "ALTER TABLE old_jobs DROP COLUMN method; ALTER TABLE old_jobs RENAME TO jobs;"
            "PRAGMA user_version = 2;"
        )
    store = TuningStore(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    old = store.get_job("ftjob-old")
    assert old is not None and old.method == "supervised" and old.suffix == "poet"
    dpo = JobRecord(**{**make_job("ftjob-dpo", created_at=1_700_000_001).__dict__, "method": "dpo"})
    store.insert_job(dpo)
    assert [j.id for j in store.list_jobs()] == ["ftjob-dpo", "ftjob-old"]
    assert [j.id for j in store.list_jobs(method="dpo")] == ["ftjob-dpo"]
    assert [j.id for j in store.list_jobs(method="supervised")] == ["ftjob-old"]
    with pytest.raises(ValueError, match="unknown job method"):
        store.insert_job(JobRecord(**{**dpo.__dict__, "id": "ftjob-x", "method": "rlhf"}))
    with pytest.raises(ValueError, match="cannot update job field"):
        store.update_job("ftjob-dpo", method="supervised")
