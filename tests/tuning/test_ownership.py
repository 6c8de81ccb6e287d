"""Owners in the tuning db: a version-1 db (before tenancy) is migrated in place with its rows unowned; reads,
pages and deletes keep to the caller's scope; unowned rows belong to the server's own account."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from ember.tuning.job_store import JobRecord
from ember.tuning.ownership import OwnerScope
from ember.tuning.store import TuningStore
from ember.tuning.upload_store import FileRecord


def make_file(file_id: str, created_at: int) -> FileRecord:
    return FileRecord(file_id, 10, created_at, "t.jsonl", "fine-tune", "processed", f"files/{file_id}.jsonl")


def make_job(job_id: str, created_at: int = 1_700_000_000) -> JobRecord:
    return JobRecord(job_id, "queued", "m", "file-a", created_at, {"n_epochs": 1})


VERSION_1_SCHEMA = """
CREATE TABLE files (
    id TEXT PRIMARY KEY, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, filename TEXT NOT NULL,
    purpose TEXT NOT NULL, status TEXT NOT NULL, path TEXT NOT NULL, example_count INTEGER,
    estimated_token_count INTEGER, validation TEXT
);
CREATE TABLE datasets (
    name TEXT PRIMARY KEY, account TEXT NOT NULL, dataset_id TEXT NOT NULL, display_name TEXT NOT NULL,
    format TEXT NOT NULL, state TEXT NOT NULL, example_count INTEGER, estimated_token_count INTEGER,
    create_time REAL NOT NULL, update_time REAL NOT NULL, filename TEXT, bytes INTEGER, path TEXT,
    validation TEXT
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, model TEXT NOT NULL, training_file TEXT NOT NULL,
    validation_file TEXT, hyperparameters TEXT NOT NULL, suffix TEXT, seed INTEGER, fine_tuned_model TEXT,
    error TEXT, created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER, trained_tokens INTEGER,
    checkpoint_path TEXT, metadata TEXT NOT NULL
);
CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT,
    PRIMARY KEY (job_id, seq)
);
INSERT INTO files VALUES ('file-old', 10, 1700000000, 'old.jsonl', 'fine-tune', 'processed', 'files/file-old.jsonl',
    1, 5, NULL);
INSERT INTO jobs (id, status, model, training_file, hyperparameters, created_at, metadata)
    VALUES ('ftjob-old', 'succeeded', 'm', 'file-old', '{}', 1700000000, '{}');
PRAGMA user_version = 1;
"""

SERVER = OwnerScope("fireworks", includes_unowned=True)
ALICE = OwnerScope("alice")


def test_a_version_1_db_keeps_its_rows_unowned(tmp_path: Path) -> None:
    db = tmp_path / "tuning.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(VERSION_1_SCHEMA)
    store = TuningStore(db)
    old_file, old_job = store.get_file("file-old"), store.get_job("ftjob-old")
    assert old_file is not None and old_file.owner is None and old_file.bytes == 10
    assert old_job is not None and old_job.owner is None and old_job.status == "succeeded"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert old_job.method == "supervised"
    assert [f.id for f in store.list_files(scope=SERVER)] == ["file-old"]
    assert store.list_files(scope=ALICE) == [] and store.get_file("file-old", ALICE) is None
    assert [j.id for j in store.list_jobs(scope=SERVER)] == ["ftjob-old"] and store.list_jobs(
        scope=ALICE
    ) == []
    TuningStore(db)  # opening the migrated db again changes nothing
    assert store.get_file("file-old", SERVER) == old_file


def test_reads_pages_and_deletes_keep_to_the_scope(tmp_path: Path) -> None:
    store = TuningStore(tmp_path / "tuning.db")
    files: list[FileRecord] = []
    for i, owner in enumerate(("alice", "bob", "alice", None)):
        files.append(replace(make_file(f"file-{i}", created_at=1_700_000_000 + i), owner=owner))
        store.insert_file(files[-1])
    assert [f.id for f in store.list_files(scope=ALICE)] == ["file-2", "file-0"]
    assert [f.id for f in store.list_files(scope=ALICE, after="file-2")] == ["file-0"]
    assert [f.id for f in store.list_files(scope=SERVER)] == ["file-3"]
    assert [f.id for f in store.list_files()] == ["file-3", "file-2", "file-1", "file-0"]  # an admin: all
    assert store.delete_file("file-1", ALICE) is None and store.get_file("file-1") is not None
    assert store.delete_file("file-0", ALICE) == files[0]

    store.insert_job(replace(make_job("ftjob-a"), owner="alice"))
    store.insert_job(make_job("ftjob-cli", created_at=1_700_000_100))  # `ember tune create`: no owner
    assert [j.id for j in store.list_jobs(scope=ALICE)] == ["ftjob-a"]
    assert [j.id for j in store.list_jobs(scope=SERVER)] == ["ftjob-cli"]
    assert store.get_job("ftjob-a", SERVER) is None and store.get_job("ftjob-a", ALICE) is not None
    assert store.update_job("ftjob-a", status="running")  # the worker's updates keep the owner
    assert store.get_job("ftjob-a", ALICE).owner == "alice"  # type: ignore[union-attr]
