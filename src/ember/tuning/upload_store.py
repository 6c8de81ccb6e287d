"""Rows of uploaded training data in the tuning db: OpenAI files and Fireworks datasets.

The content lies on disk (file_storage.py); a row points at it only once it is validated and in place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ember.tuning.ownership import OwnerScope, sees
from ember.tuning.tuning_db import TuningDb, check_choice, check_names, from_row

DATASET_STATES = ("UPLOADING", "READY")


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
    owner: str | None = None  # the account that uploaded it (ownership.py)


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


class UploadStore(TuningDb):
    """The `files` and `datasets` tables."""

    def insert_file(self, record: FileRecord) -> None:
        self._insert("files", record)

    def get_file(self, file_id: str, scope: OwnerScope | None = None) -> FileRecord | None:
        """The file, or None when there is none or `scope` does not see it (another owner's file)."""
        record = self._get(FileRecord, "SELECT * FROM files WHERE id = ?", (file_id,))
        return record if record is not None and sees(scope, record.owner) else None

    def list_files(
        self,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 100,
        scope: OwnerScope | None = None,
    ) -> list[FileRecord]:
        """Newest first; `after` is the id of the last file of the previous page."""
        conditions, params = ["1"], []
        if purpose is not None:
            conditions.append("purpose = ?")
            params.append(purpose)
        if scope is not None:
            condition, values = scope.where()
            conditions.append(condition)
            params += values
        where = " AND ".join(conditions)
        return self._page(FileRecord, "files", "id", "created_at", where, params, after, limit)

    def delete_file(self, file_id: str, scope: OwnerScope | None = None) -> FileRecord | None:
        """Remove the row and return it (None when there was none, or `scope` does not see it); the caller
        removes the content."""
        return self._delete(FileRecord, "files", "id", file_id, scope=scope)

    # -- datasets ------------------------------------------------------------------------------------------

    def insert_dataset(self, record: DatasetRecord) -> None:
        check_choice("dataset state", record.state, DATASET_STATES)
        self._insert("datasets", record)

    def get_dataset(self, name: str) -> DatasetRecord | None:
        return self._get(DatasetRecord, "SELECT * FROM datasets WHERE name = ?", (name,))

    def list_datasets(self, account: str) -> list[DatasetRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM datasets WHERE account = ? ORDER BY create_time, name", (account,)
            ).fetchall()
        return [from_row(DatasetRecord, row) for row in rows]

    def complete_dataset_upload(self, name: str, **values: Any) -> DatasetRecord | None:
        """Attach the uploaded file (filename, bytes, path, counts, validation) and mark the dataset READY.

        Only a dataset still UPLOADING changes; returns the updated record, or None when the dataset is gone or
        another upload completed first.
        """
        allowed = {"filename", "bytes", "path", "example_count", "estimated_token_count", "validation"}
        check_names(values, allowed, "dataset upload")
        values = {**values, "state": "READY", "update_time": time.time()}
        with self._write() as conn:
            changed = self._update(conn, "datasets", "name", name, values, "state = 'UPLOADING'")
            row = (
                conn.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone() if changed else None
            )
        return None if row is None else from_row(DatasetRecord, row)

    def update_dataset(self, name: str, display_name: str) -> DatasetRecord | None:
        """Change what a user may change of a dataset (its display name); None when there is no such dataset."""
        with self._write() as conn:
            values = {"display_name": display_name, "update_time": time.time()}
            changed = self._update(conn, "datasets", "name", name, values)
            row = (
                conn.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone() if changed else None
            )
        return None if row is None else from_row(DatasetRecord, row)

    def delete_dataset(self, name: str, only_state: str | None = None) -> DatasetRecord | None:
        """Remove the row and return it; with `only_state`, only a dataset in that state is removed."""
        return self._delete(DatasetRecord, "datasets", "name", name, only_state)
