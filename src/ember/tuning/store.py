"""SQLite state of fine-tuning: uploaded files, datasets, jobs and job events, in one db file.

Used from FastAPI handlers (threads) and from the training worker (another process), so every call opens its
own connection (cheap for SQLite) and writes run in `BEGIN IMMEDIATE` transactions: writers queue on the
database lock (busy timeout) instead of failing, and a read never sees half a write. The db is in WAL mode so
readers do not block the writer.

Schema (version 1, in `PRAGMA user_version`):

    files        id TEXT PK ("file-..."), bytes INT, created_at INT (unix s), filename TEXT, purpose TEXT,
                 status TEXT ("processed"), path TEXT (relative to the data directory), example_count INT,
                 estimated_token_count INT, validation TEXT (ValidationReport JSON)
    datasets     name TEXT PK ("accounts/<a>/datasets/<id>"), account TEXT, dataset_id TEXT, display_name TEXT,
                 format TEXT ("CHAT"), state TEXT (UPLOADING | READY), example_count INT,
                 estimated_token_count INT, create_time REAL, update_time REAL (unix s), filename TEXT,
                 bytes INT, path TEXT (NULL until uploaded), validation TEXT (JSON)
    jobs         id TEXT PK ("ftjob-..."), status TEXT (JOB_STATUSES), model TEXT, training_file TEXT,
                 validation_file TEXT, hyperparameters TEXT (JSON object), suffix TEXT, seed INT,
                 fine_tuned_model TEXT, error TEXT (JSON object: message, param, code), created_at INT,
                 started_at INT, finished_at INT, trained_tokens INT, checkpoint_path TEXT,
                 metadata TEXT (JSON object, e.g. the Fireworks job fields)
    job_events   job_id TEXT -> jobs.id ON DELETE CASCADE, seq INT (1, 2, ... per job), created_at INT,
                 level TEXT (info | warn | error), message TEXT, type TEXT (message | metrics), data TEXT (JSON)
                 PRIMARY KEY (job_id, seq)
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
DATASET_STATES = ("UPLOADING", "READY")
EVENT_LEVELS = ("info", "warn", "error")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, filename TEXT NOT NULL,
    purpose TEXT NOT NULL, status TEXT NOT NULL, path TEXT NOT NULL, example_count INTEGER,
    estimated_token_count INTEGER, validation TEXT
);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, account TEXT NOT NULL, dataset_id TEXT NOT NULL, display_name TEXT NOT NULL,
    format TEXT NOT NULL, state TEXT NOT NULL, example_count INTEGER, estimated_token_count INTEGER,
    create_time REAL NOT NULL, update_time REAL NOT NULL, filename TEXT, bytes INTEGER, path TEXT,
    validation TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, model TEXT NOT NULL, training_file TEXT NOT NULL,
    validation_file TEXT, hyperparameters TEXT NOT NULL, suffix TEXT, seed INTEGER, fine_tuned_model TEXT,
    error TEXT, created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER, trained_tokens INTEGER,
    checkpoint_path TEXT, metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS files_by_time ON files (created_at);
CREATE INDEX IF NOT EXISTS datasets_by_account ON datasets (account, create_time);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at);
"""


class StoreConflictError(ValueError):
    """A row with that id or name already exists."""


def new_id(prefix: str) -> str:
    """A random id in the OpenAI style, e.g. `file-3f9a...` (96 random bits)."""
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class FileRecord:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    path: str  # relative to the data directory
    example_count: int | None = None
    estimated_token_count: int | None = None
    validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    account: str
    dataset_id: str
    display_name: str
    format: str
    state: str
    create_time: float
    update_time: float
    example_count: int | None = None
    estimated_token_count: int | None = None
    filename: str | None = None
    bytes: int | None = None
    path: str | None = None  # relative to the data directory; None until a file is uploaded
    validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: str
    model: str
    training_file: str
    created_at: int
    hyperparameters: dict[str, Any]
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None
    started_at: int | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    checkpoint_path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. the Fireworks job fields


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    seq: int
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None


_JSON_COLUMNS = frozenset({"validation", "hyperparameters", "error", "metadata", "data"})
_JOB_UPDATABLE = frozenset(f.name for f in fields(JobRecord)) - {"id", "created_at"}


class TuningStore:
    """Files, datasets, jobs and events in the SQLite db at `db_path` (created with its schema if missing)."""

    def __init__(self, db_path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.db_path = Path(db_path)
        self.busy_timeout_s = busy_timeout_s
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ValueError(
                    f"{self.db_path} has schema version {version}; this ember expects {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per db file, outside a transaction

    # -- files ---------------------------------------------------------------------------------------------

    def insert_file(self, record: FileRecord) -> None:
        self._insert("files", record)

    def get_file(self, file_id: str) -> FileRecord | None:
        return self._get(FileRecord, "SELECT * FROM files WHERE id = ?", (file_id,))

    def list_files(
        self, purpose: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[FileRecord]:
        """Newest first; `after` is the id of the last file of the previous page."""
        where, params = ("purpose = ?", [purpose]) if purpose is not None else ("1", [])
        return self._page(FileRecord, "files", "id", "created_at", where, params, after, limit)

    def delete_file(self, file_id: str) -> FileRecord | None:
        """Remove the row and return it (None when there was none); the caller removes the content."""
        return self._delete(FileRecord, "files", "id", file_id)

    # -- datasets ------------------------------------------------------------------------------------------

    def insert_dataset(self, record: DatasetRecord) -> None:
        _check_choice("dataset state", record.state, DATASET_STATES)
        self._insert("datasets", record)

    def get_dataset(self, name: str) -> DatasetRecord | None:
        return self._get(DatasetRecord, "SELECT * FROM datasets WHERE name = ?", (name,))

    def list_datasets(self, account: str) -> list[DatasetRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM datasets WHERE account = ? ORDER BY create_time, name", (account,)
            ).fetchall()
        return [_from_row(DatasetRecord, row) for row in rows]

    def complete_dataset_upload(self, name: str, **values: Any) -> DatasetRecord | None:
        """Attach the uploaded file (filename, bytes, path, counts, validation) and mark the dataset READY.

        Only a dataset still UPLOADING changes; returns the updated record, or None when the dataset is gone or
        another upload completed first.
        """
        allowed = {"filename", "bytes", "path", "example_count", "estimated_token_count", "validation"}
        _check_names(values, allowed, "dataset upload")
        values = {**values, "state": "READY", "update_time": time.time()}
        with self._write() as conn:
            changed = self._update(conn, "datasets", "name", name, values, "state = 'UPLOADING'")
            row = (
                conn.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone() if changed else None
            )
        return None if row is None else _from_row(DatasetRecord, row)

    def delete_dataset(self, name: str, only_state: str | None = None) -> DatasetRecord | None:
        """Remove the row and return it; with `only_state`, only a dataset in that state is removed."""
        return self._delete(DatasetRecord, "datasets", "name", name, only_state)

    # -- jobs ----------------------------------------------------------------------------------------------

    def insert_job(self, record: JobRecord) -> None:
        _check_choice("job status", record.status, JOB_STATUSES)
        self._insert("jobs", record)

    def get_job(self, job_id: str) -> JobRecord | None:
        return self._get(JobRecord, "SELECT * FROM jobs WHERE id = ?", (job_id,))

    def list_jobs(self, after: str | None = None, limit: int = 20) -> list[JobRecord]:
        """Newest first; `after` is the id of the last job of the previous page."""
        return self._page(JobRecord, "jobs", "id", "created_at", "1", [], after, limit)

    def list_jobs_with_status(self, statuses: tuple[str, ...]) -> list[JobRecord]:
        """Oldest first, e.g. the queue a worker takes jobs from."""
        for status in statuses:
            _check_choice("job status", status, JOB_STATUSES)
        marks = ", ".join("?" for _ in statuses)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created_at, rowid", statuses
            ).fetchall()
        return [_from_row(JobRecord, row) for row in rows]

    def update_job(self, job_id: str, *, expect_status: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Set the given job fields; with `expect_status`, only if the job is in one of those statuses.

        Returns whether the job changed, so `update_job(id, status="running", expect_status=("queued",))` is
        an atomic claim and a cancel cannot be overwritten by a worker finishing at the same moment.
        """
        _check_names(values, _JOB_UPDATABLE, "job")
        if "status" in values:
            _check_choice("job status", values["status"], JOB_STATUSES)
        condition = None
        params: list[Any] = []
        if expect_status is not None:
            for status in expect_status:
                _check_choice("job status", status, JOB_STATUSES)
            condition = f"status IN ({', '.join('?' for _ in expect_status)})"
            params = list(expect_status)
        with self._write() as conn:
            return self._update(conn, "jobs", "id", job_id, values, condition, params)

    def delete_job(self, job_id: str) -> JobRecord | None:
        """Remove the job and its events and return it (None when there was none)."""
        return self._delete(JobRecord, "jobs", "id", job_id)

    def add_job_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: Literal["message", "metrics"] = "message",
        data: dict[str, Any] | None = None,
    ) -> JobEvent:
        """Append an event; its `seq` is the next number of that job's events, unique under concurrent writers."""
        _check_choice("event level", level, EVENT_LEVELS)
        _check_choice("event type", type, ("message", "metrics"))
        created_at = int(time.time())
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise LookupError(f"no fine-tuning job {job_id!r}")
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            event = JobEvent(job_id, seq, created_at, level, message, type, data)
            self._insert_row(conn, "job_events", event)
        return event

    def list_job_events(
        self,
        job_id: str,
        *,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[JobEvent]:
        """Events with after_seq < seq < before_seq, oldest first (or newest first, as OpenAI pages them)."""
        _check_limit(limit)
        order = "DESC" if newest_first else "ASC"
        sql = (
            "SELECT * FROM job_events WHERE job_id = ? AND seq > ? AND (? IS NULL OR seq < ?) "
            f"ORDER BY seq {order} LIMIT ?"
        )
        with self._connect() as conn:
            rows = conn.execute(sql, (job_id, after_seq, before_seq, before_seq, limit)).fetchall()
        return [_from_row(JobEvent, row) for row in rows]

    # -- plumbing ------------------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            # In WAL mode NORMAL still survives an application crash and never corrupts; it skips most fsyncs.
            conn.execute("PRAGMA synchronous = NORMAL")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction holding the write lock from its start, so read-then-write steps cannot interleave."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _insert(self, table: str, record: Any) -> None:
        with self._write() as conn:
            self._insert_row(conn, table, record)

    @staticmethod
    def _insert_row(conn: sqlite3.Connection, table: str, record: Any) -> None:
        values = {f.name: _to_column(f.name, getattr(record, f.name)) for f in fields(record)}
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        try:
            conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(values.values()))
        except sqlite3.IntegrityError as error:
            raise StoreConflictError(f"{table}: {error}") from error

    @staticmethod
    def _update(
        conn: sqlite3.Connection,
        table: str,
        key: str,
        key_value: str,
        values: dict[str, Any],
        condition: str | None = None,
        condition_params: list[Any] | None = None,
    ) -> bool:
        if not values:
            raise ValueError("nothing to update")
        assignments = ", ".join(f"{name} = ?" for name in values)
        params = [_to_column(name, value) for name, value in values.items()] + [key_value]
        sql = f"UPDATE {table} SET {assignments} WHERE {key} = ?"
        if condition is not None:
            sql += f" AND {condition}"
            params += condition_params or []
        return conn.execute(sql, params).rowcount == 1

    def _get(self, cls: type, sql: str, params: tuple[Any, ...]) -> Any:
        with self._connect() as conn:
            row = conn.execute(sql, params).fetchone()
        return None if row is None else _from_row(cls, row)

    def _delete(self, cls: type, table: str, key: str, key_value: str, only_state: str | None = None) -> Any:
        with self._write() as conn:
            row = conn.execute(f"SELECT * FROM {table} WHERE {key} = ?", (key_value,)).fetchone()
            if row is None or (only_state is not None and row["state"] != only_state):
                return None
            conn.execute(f"DELETE FROM {table} WHERE {key} = ?", (key_value,))
        return _from_row(cls, row)

    def _page(
        self,
        cls: type,
        table: str,
        key: str,
        time_column: str,
        where: str,
        params: list[Any],
        after: str | None,
        limit: int,
    ) -> list[Any]:
        """Rows newest first (ties broken by insertion order), starting after the row whose key is `after`."""
        _check_limit(limit)
        sql = f"SELECT * FROM {table} WHERE {where}"
        with self._connect() as conn:
            if after is not None:
                cursor = conn.execute(f"SELECT {time_column}, rowid FROM {table} WHERE {key} = ?", (after,))
                position = cursor.fetchone()
                if position is None:
                    raise ValueError(f"unknown pagination cursor 'after': {after!r}")
                sql += f" AND ({time_column}, rowid) < (?, ?)"
                params = [*params, position[0], position[1]]
            sql += f" ORDER BY {time_column} DESC, rowid DESC LIMIT ?"
            rows = conn.execute(sql, [*params, limit]).fetchall()
        return [_from_row(cls, row) for row in rows]


def _to_column(name: str, value: Any) -> Any:
    return json.dumps(value) if name in _JSON_COLUMNS and value is not None else value


def _from_row(cls: type, row: sqlite3.Row) -> Any:
    names = {f.name for f in fields(cls)}
    values = {
        key: json.loads(row[key]) if key in _JSON_COLUMNS and row[key] is not None else row[key]
        for key in row.keys()
        if key in names
    }
    return cls(**values)


def _check_names(values: dict[str, Any], allowed: frozenset[str] | set[str], what: str) -> None:
    unknown = set(values) - set(allowed)
    if unknown:
        raise ValueError(f"cannot update {what} field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be between 1 and 10000, got {limit}")
