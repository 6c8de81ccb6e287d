"""The one SQLite db file of fine-tuning: its schema, connections and transactions, and the row helpers the
upload store (upload_store.py) and the job store (job_store.py) share.

Used from FastAPI handlers (threads) and from the training worker (another process), so every call opens its
own connection (cheap for SQLite) and writes run in `BEGIN IMMEDIATE` transactions: writers queue on the
database lock (busy timeout) instead of failing, and a read never sees half a write. The db is in WAL mode so
readers do not block the writer. The four tables share one schema version because they share one file.

Schema (version 3, in `PRAGMA user_version`; version 1 had no `owner` columns and is migrated in place, its rows
left without an owner: see ownership.py; version 2 had no `jobs.method`, its jobs were all supervised):

    files        id TEXT PK ("file-..."), bytes INT, created_at INT (unix s), filename TEXT, purpose TEXT,
                 status TEXT ("processed"), path TEXT (relative to the data directory), example_count INT,
                 estimated_token_count INT, validation TEXT (ValidationReport JSON), owner TEXT (account)
    datasets     name TEXT PK ("accounts/<a>/datasets/<id>"), account TEXT, dataset_id TEXT, display_name TEXT,
                 format TEXT ("CHAT"), state TEXT (UPLOADING | READY), example_count INT,
                 estimated_token_count INT, create_time REAL, update_time REAL (unix s), filename TEXT,
                 bytes INT, path TEXT (NULL until uploaded), validation TEXT (JSON)
    jobs         id TEXT PK ("ftjob-..."), status TEXT (job_store.JOB_STATUSES), model TEXT, training_file TEXT,
                 validation_file TEXT, hyperparameters TEXT (JSON object), suffix TEXT, seed INT,
                 fine_tuned_model TEXT, error TEXT (JSON object: message, param, code), created_at INT,
                 started_at INT, finished_at INT, trained_tokens INT, checkpoint_path TEXT,
                 metadata TEXT (JSON object, e.g. the Fireworks job fields), owner TEXT (account),
                 method TEXT (supervised | dpo)
    job_events   job_id TEXT -> jobs.id ON DELETE CASCADE, seq INT (1, 2, ... per job), created_at INT,
                 level TEXT (info | warn | error), message TEXT, type TEXT (message | metrics), data TEXT (JSON)
                 PRIMARY KEY (job_id, seq)
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from ember.sqlite_connections import connect, write_transaction
from ember.tuning.ownership import OwnerScope

SCHEMA_VERSION = 3
_OWNER_COLUMNS = {"files": "owner", "jobs": "owner"}  # added by version 2 (datasets carry their account)
_METHOD_COLUMN = "ALTER TABLE jobs ADD COLUMN method TEXT NOT NULL DEFAULT 'supervised'"  # added by version 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, filename TEXT NOT NULL,
    purpose TEXT NOT NULL, status TEXT NOT NULL, path TEXT NOT NULL, example_count INTEGER,
    estimated_token_count INTEGER, validation TEXT, owner TEXT
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
    checkpoint_path TEXT, metadata TEXT NOT NULL, owner TEXT, method TEXT NOT NULL DEFAULT 'supervised'
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS files_by_time ON files (created_at);
CREATE INDEX IF NOT EXISTS datasets_by_account ON datasets (account, create_time);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_method ON jobs (method, created_at);
"""


class StoreConflictError(ValueError):
    """A row with that id or name already exists."""


def new_id(prefix: str) -> str:
    """A random id in the OpenAI style, e.g. `file-3f9a...` (96 random bits)."""
    return f"{prefix}-{secrets.token_hex(12)}"


_JSON_COLUMNS = frozenset({"validation", "hyperparameters", "error", "metadata", "data"})


class TuningDb:
    """The SQLite db at `db_path` (created with its schema if missing); the record stores build on it."""

    def __init__(self, db_path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.db_path = Path(db_path)
        self.busy_timeout_s = busy_timeout_s
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, 2, SCHEMA_VERSION):
                raise ValueError(
                    f"{self.db_path} has schema version {version}; this ember expects {SCHEMA_VERSION}"
                )
            if version == 1:  # before tenancy: the rows stay, without an owner
                for table, column in _OWNER_COLUMNS.items():
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
            if version in (1, 2):  # before DPO: every job was supervised
                conn.execute(_METHOD_COLUMN)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per db file, outside a transaction

    # -- for the record stores: connections, transactions and generic row access ---------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path, self.busy_timeout_s) as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction holding the write lock from its start, so read-then-write steps cannot interleave."""
        with self._connect() as conn, write_transaction(conn):
            yield conn

    def _insert(self, table: str, record: Any) -> None:
        with self._write() as conn:
            self._insert_row(conn, table, record)

    @staticmethod
    def _insert_row(conn: sqlite3.Connection, table: str, record: Any) -> None:
        values = {f.name: to_column(f.name, getattr(record, f.name)) for f in fields(record)}
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
        params = [to_column(name, value) for name, value in values.items()] + [key_value]
        sql = f"UPDATE {table} SET {assignments} WHERE {key} = ?"
        if condition is not None:
            sql += f" AND {condition}"
            params += condition_params or []
        return conn.execute(sql, params).rowcount == 1

    def _get(self, cls: type, sql: str, params: tuple[Any, ...]) -> Any:
        with self._connect() as conn:
            row = conn.execute(sql, params).fetchone()
        return None if row is None else from_row(cls, row)

    def _delete(
        self,
        cls: type,
        table: str,
        key: str,
        key_value: str,
        only_state: str | None = None,
        scope: OwnerScope | None = None,
    ) -> Any:
        with self._write() as conn:
            row = conn.execute(f"SELECT * FROM {table} WHERE {key} = ?", (key_value,)).fetchone()
            if row is None or (only_state is not None and row["state"] != only_state):
                return None
            if scope is not None and not scope.sees(row["owner"]):
                return None
            conn.execute(f"DELETE FROM {table} WHERE {key} = ?", (key_value,))
        return from_row(cls, row)

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
        check_limit(limit)
        sql = f"SELECT * FROM {table} WHERE {where}"
        with self._connect() as conn:
            if after is not None:
                # The cursor must be a row the caller sees: another owner's id is as unknown as a made-up one.
                cursor = conn.execute(
                    f"SELECT {time_column}, rowid FROM {table} WHERE {key} = ? AND {where}", (after, *params)
                )
                position = cursor.fetchone()
                if position is None:
                    raise ValueError(f"unknown pagination cursor 'after': {after!r}")
                sql += f" AND ({time_column}, rowid) < (?, ?)"
                params = [*params, position[0], position[1]]
            sql += f" ORDER BY {time_column} DESC, rowid DESC LIMIT ?"
            rows = conn.execute(sql, [*params, limit]).fetchall()
        return [from_row(cls, row) for row in rows]


def to_column(name: str, value: Any) -> Any:
    return json.dumps(value) if name in _JSON_COLUMNS and value is not None else value


def from_row(cls: type, row: sqlite3.Row) -> Any:
    names = {f.name for f in fields(cls)}
    values = {
        key: json.loads(row[key]) if key in _JSON_COLUMNS and row[key] is not None else row[key]
        for key in row.keys()
        if key in names
    }
    return cls(**values)


def check_names(values: dict[str, Any], allowed: frozenset[str] | set[str], what: str) -> None:
    unknown = set(values) - set(allowed)
    if unknown:
        raise ValueError(f"cannot update {what} field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def check_limit(limit: int) -> None:
    if not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be between 1 and 10000, got {limit}")
