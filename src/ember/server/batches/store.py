"""The batches db (`batches.db` in the data directory): each batch with its owner account, and each of its
requests with its outcome, so a restarted server resumes the requests still pending and keeps those done.

A request's outcome is written in the same transaction that counts it, so `request_counts` and the lines agree
whatever moment the process dies at.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ember.server.batches.input_file import BatchLine
from ember.sqlite_connections import connect, write_transaction
from ember.tuning.ownership import OwnerScope

DB_FILE = "batches.db"
SCHEMA_VERSION = 1
STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")
LINE_STATES = ("pending", "completed", "failed")
_JSON_COLUMNS = frozenset({"metadata", "errors", "fireworks", "body", "result"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, api TEXT NOT NULL, owner TEXT, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL, model TEXT, metadata TEXT, fireworks TEXT,
    in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, expired_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER, output_file_id TEXT, error_file_id TEXT, errors TEXT,
    total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE, line INTEGER NOT NULL,
    custom_id TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL, result TEXT,
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX IF NOT EXISTS batches_by_time ON batches (created_at);
CREATE INDEX IF NOT EXISTS pending_lines ON batch_lines (batch_id, state, line);
"""


@dataclass(frozen=True)
class BatchRecord:
    id: str
    api: str  # "openai" (/v1/batches) or "fireworks" (batchInferenceJobs)
    owner: str | None  # the account that created it (ownership.py)
    endpoint: str
    input_file_id: str  # an OpenAI file id, or a Fireworks dataset name
    completion_window: str
    status: str
    created_at: int
    expires_at: int
    model: str | None = None
    metadata: dict[str, str] | None = None
    fireworks: dict[str, Any] | None = None  # a Fireworks job's own fields (name, output dataset, parameters)
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None  # OpenAI: the file; Fireworks: the output dataset's name
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class LineRecord:
    batch_id: str
    line: int
    custom_id: str
    url: str
    body: dict[str, Any]
    state: str  # pending, completed (a 2xx answer) or failed (its error)
    result: dict[str, Any] | None = None  # {"status_code", "request_id", "body"} or {"error": {...}}


@dataclass(frozen=True)
class LineUsage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


class BatchStore:
    def __init__(self, db_path: Path, busy_timeout_s: float = 30.0) -> None:
        self.db_path = db_path
        self.busy_timeout_s = busy_timeout_s
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ValueError(
                    f"{db_path} has schema version {version}; this ember expects {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    # -- batches ----------------------------------------------------------------------------------------------

    def create(self, record: BatchRecord, lines: list[BatchLine]) -> None:
        """The batch and all its requests, pending, in one transaction; ValueError if the id is taken."""
        with self._write() as conn:
            values = {f.name: _column(f.name, getattr(record, f.name)) for f in fields(record)}
            values["total"] = len(lines)
            try:
                conn.execute(
                    f"INSERT INTO batches ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                    tuple(values.values()),
                )
            except sqlite3.IntegrityError as error:
                raise ValueError(f"batch {record.id!r} already exists") from error
            conn.executemany(
                "INSERT INTO batch_lines (batch_id, line, custom_id, url, body, state) VALUES (?, ?, ?, ?, ?, ?)",
                [(record.id, x.line, x.custom_id, x.url, json.dumps(x.body), "pending") for x in lines],
            )

    def get(self, batch_id: str, scope: OwnerScope | None = None) -> BatchRecord | None:
        """The batch, or None when there is none or `scope` does not see it."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        record = None if row is None else _record(BatchRecord, row)
        return record if record is not None and (scope is None or scope.sees(record.owner)) else None

    def page(
        self,
        api: str,
        scope: OwnerScope | None,
        after: str | None,
        limit: int,
        id_prefix: str = "",
        newest_first: bool = True,
    ) -> list[BatchRecord]:
        """Newest first (OpenAI) or oldest first (Fireworks), starting after the batch `after` (LookupError if
        the caller does not see it); only ids starting with `id_prefix` (a Fireworks account's jobs)."""
        where, params = "api = ? AND substr(id, 1, ?) = ?", [api, len(id_prefix), id_prefix]
        if scope is not None:
            condition, scope_params = scope.where()
            where, params = f"{where} AND {condition}", [*params, *scope_params]
        sql = f"SELECT * FROM batches WHERE {where}"
        with self._connect() as conn:
            if after is not None:
                found = conn.execute(
                    f"SELECT created_at, rowid FROM batches WHERE id = ? AND {where}", (after, *params)
                ).fetchone()
                if found is None:
                    raise LookupError(f"unknown pagination cursor 'after': {after!r}")
                sql += f" AND (created_at, rowid) {'<' if newest_first else '>'} (?, ?)"
                params = [*params, found[0], found[1]]
            order = "DESC" if newest_first else "ASC"
            rows = conn.execute(
                f"{sql} ORDER BY created_at {order}, rowid {order} LIMIT ?", [*params, limit]
            ).fetchall()
        return [_record(BatchRecord, row) for row in rows]

    def unfinished(self) -> list[BatchRecord]:
        with self._connect() as conn:
            marks = ", ".join("?" for _ in UNFINISHED)
            rows = conn.execute(
                f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY created_at, rowid", UNFINISHED
            ).fetchall()
        return [_record(BatchRecord, row) for row in rows]

    def set_status(self, batch_id: str, status: str, *, only_from: tuple[str, ...], **values: Any) -> bool:
        """Moves the batch to `status` (with more column values) if it is in one of `only_from`."""
        if status not in STATUSES:
            raise ValueError(f"unknown batch status {status!r}")
        values = {"status": status, **values}
        assignments = ", ".join(f"{name} = ?" for name in values)
        marks = ", ".join("?" for _ in only_from)
        params = [_column(name, value) for name, value in values.items()]
        with self._write() as conn:
            changed = conn.execute(
                f"UPDATE batches SET {assignments} WHERE id = ? AND status IN ({marks})",
                [*params, batch_id, *only_from],
            )
            return changed.rowcount == 1

    def delete(self, batch_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
            conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    # -- requests ---------------------------------------------------------------------------------------------

    def pending_lines(self, batch_id: str, limit: int = -1, after_line: int = 0) -> list[LineRecord]:
        """The requests still to run after line `after_line`, in file order (at most `limit`; -1: all)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM batch_lines WHERE batch_id = ? AND state = 'pending' AND line > ? "
                "ORDER BY line LIMIT ?",
                (batch_id, after_line, limit),
            ).fetchall()
        return [_record(LineRecord, row) for row in rows]

    def lines(self, batch_id: str) -> Iterator[LineRecord]:
        """Every request in file order (read a page at a time, so a big batch is never all in memory)."""
        last = 0
        while True:
            with self._connect() as conn:
                rows = conn.execute(
                    "SELECT * FROM batch_lines WHERE batch_id = ? AND line > ? ORDER BY line LIMIT 500",
                    (batch_id, last),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _record(LineRecord, row)
            last = rows[-1]["line"]

    def finish_line(
        self, batch_id: str, line: int, ok: bool, result: dict[str, Any], usage: LineUsage | None = None
    ) -> bool:
        """Records a request's outcome and counts it, once: False if it was not pending (already recorded)."""
        usage = usage or LineUsage()
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE batch_lines SET state = ?, result = ? WHERE batch_id = ? AND line = ? AND state = 'pending'",
                ("completed" if ok else "failed", json.dumps(result), batch_id, line),
            )
            if changed.rowcount != 1:
                return False
            counter = "completed" if ok else "failed"
            conn.execute(
                f"UPDATE batches SET {counter} = {counter} + 1, input_tokens = input_tokens + ?, "
                "cached_tokens = cached_tokens + ?, output_tokens = output_tokens + ? WHERE id = ?",
                (usage.input_tokens, usage.cached_tokens, usage.output_tokens, batch_id),
            )
            return True

    # -- connections ------------------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path, self.busy_timeout_s, foreign_keys=False) as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn, write_transaction(conn):
            yield conn


def _column(name: str, value: Any) -> Any:
    return json.dumps(value) if name in _JSON_COLUMNS and value is not None else value


def _record(cls: type, row: sqlite3.Row) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(
        **{
            key: json.loads(row[key]) if key in _JSON_COLUMNS and row[key] is not None else row[key]
            for key in row.keys()
            if key in names
        }
    )
