"""Stored responses (`store`, on by default as at OpenAI): SQLite in the data directory's `responses.db`, or
in memory for the server's life when it runs without a data directory.

Each row is one response: its JSON object, the full conversation it answered (the input items of every
response before it on its previous_response_id chain, their outputs, then its own input: what
GET /responses/{id}/input_items lists and what a later response continues from), and its owner account, so a
tenant sees only its own (tuning.ownership's OwnerScope, as files and jobs). Items are also kept by id for
`item_reference` inputs.

Schema (version 1, in `PRAGMA user_version`):

    responses  id TEXT PK ("resp_..."), owner TEXT (account), created_at REAL (unix s), response TEXT (the
               response object, JSON), input_items TEXT (JSON list of items)
    items      id TEXT, response_id TEXT -> responses.id ON DELETE CASCADE, owner TEXT, item TEXT (JSON),
               PRIMARY KEY (response_id, id): the input and output items each response added
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.sqlite_connections import connect, write_transaction
from ember.tuning.ownership import OwnerScope

SCHEMA_VERSION = 1
DB_FILE = "responses.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, owner TEXT, created_at REAL NOT NULL, response TEXT NOT NULL, input_items TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id TEXT NOT NULL, response_id TEXT NOT NULL REFERENCES responses(id) ON DELETE CASCADE, owner TEXT,
    item TEXT NOT NULL, PRIMARY KEY (response_id, id)
);
CREATE INDEX IF NOT EXISTS items_by_id ON items (id);
"""


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """What a response continuing this one starts from: its input, then its output."""
        return [*self.input_items, *self.response["output"]]


class ResponseStore:
    """Stored responses in one SQLite db (a file, or a named in-memory db that lives as long as this object)."""

    def __init__(self, db_path: Path | None, busy_timeout_s: float = 30.0) -> None:
        self.busy_timeout_s = busy_timeout_s
        self._keeper: sqlite3.Connection | None = None
        self._memory_lock: threading.Lock | None = None
        if db_path is None:
            # A shared in-memory db exists while one connection is open: the keeper holds it for our life.
            self._target = f"file:ember-responses-{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._keeper = sqlite3.connect(self._target, uri=True, check_same_thread=False)
            self._memory_lock = threading.Lock()
        else:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            self._target = db_path.resolve().as_uri()
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
        if db_path is not None:
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            # Background responses run in this process only: a server that stopped left its own unfinished.
            self.fail_unfinished("the server stopped before this background response finished")

    @property
    def in_memory(self) -> bool:
        return self._keeper is not None

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A shared-cache in-memory db answers a lock conflict with SQLITE_LOCKED at once (the busy timeout does
        # not apply): its connections take turns instead.
        with self._memory_lock or contextlib.nullcontext():
            with connect(self._target, self.busy_timeout_s, uri=True) as conn:
                yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn, write_transaction(conn):
            yield conn

    # -- the rows ---------------------------------------------------------------------------------------

    def save(
        self,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        new_items: list[dict[str, Any]],
        owner: str | None,
    ) -> None:
        """Stores `response` with the conversation it answered; `new_items` (this turn's input and output) are
        the items it adds for item_reference."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO responses (id, owner, created_at, response, input_items) VALUES (?, ?, ?, ?, ?)",
                (response["id"], owner, response["created_at"], _json(response), _json(input_items)),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO items (id, response_id, owner, item) VALUES (?, ?, ?, ?)",
                [(item["id"], response["id"], owner, _json(item)) for item in new_items if item.get("id")],
            )

    def replace(self, response: dict[str, Any], new_items: list[dict[str, Any]]) -> None:
        """A background response's final state in place of its in-progress one, and the items it added."""
        with self._write() as conn:
            conn.execute("UPDATE responses SET response = ? WHERE id = ?", (_json(response), response["id"]))
            owner = conn.execute("SELECT owner FROM responses WHERE id = ?", (response["id"],)).fetchone()
            if owner is not None:
                conn.executemany(
                    "INSERT OR IGNORE INTO items (id, response_id, owner, item) VALUES (?, ?, ?, ?)",
                    [
                        (item["id"], response["id"], owner[0], _json(item))
                        for item in new_items
                        if item.get("id")
                    ],
                )

    def fail_unfinished(self, message: str) -> int:
        """Background responses a previous server left queued or in progress: failed with `message`."""
        error = _json({"code": "server_error", "message": message})
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE responses SET response = json_set(response, '$.status', 'failed', '$.error', json(?)) "
                "WHERE json_extract(response, '$.status') IN ('queued', 'in_progress')",
                (error,),
            )
            return cursor.rowcount

    def get(self, response_id: str, scope: OwnerScope | None) -> StoredResponse | None:
        where, params = _scoped(scope)
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT response, input_items FROM responses WHERE id = ? AND {where}",
                (response_id, *params),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row["response"]), json.loads(row["input_items"]))

    def delete(self, response_id: str, scope: OwnerScope | None) -> bool:
        where, params = _scoped(scope)
        with self._write() as conn:
            cursor = conn.execute(f"DELETE FROM responses WHERE id = ? AND {where}", (response_id, *params))
            return cursor.rowcount == 1

    def item(self, item_id: str, scope: OwnerScope | None) -> dict[str, Any] | None:
        where, params = _scoped(scope)
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT item FROM items WHERE id = ? AND {where} LIMIT 1", (item_id, *params)
            ).fetchone()
        return None if row is None else json.loads(row["item"])


def _scoped(scope: OwnerScope | None) -> tuple[str, list[Any]]:
    return ("1 = 1", []) if scope is None else scope.where("owner")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
