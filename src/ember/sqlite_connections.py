"""SQLite connections as ember's stores (tuning.db, responses.db, batches.db) open them: autocommit mode with
explicit transactions, rows by column name, synchronous=NORMAL (under WAL it survives an application crash and
never corrupts, and it skips most fsyncs), and write transactions that hold the write lock from their start, so
read-then-write steps cannot interleave."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def connect(
    target: str | object, busy_timeout_s: float, *, uri: bool = False, foreign_keys: bool = True
) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(target, uri=uri, timeout=busy_timeout_s, isolation_level=None)  # type: ignore[arg-type]
    try:
        conn.row_factory = sqlite3.Row
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        yield conn
    finally:
        conn.close()


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT on `conn`; ROLLBACK when anything raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
