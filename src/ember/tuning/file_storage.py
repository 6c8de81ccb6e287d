"""Training data stored: validate a received upload, then commit it as an OpenAI file or a Fireworks dataset.

Nothing is half-stored: an upload is written to `incoming/` (multipart_upload.py), validated there, moved into
place with `os.replace` (same filesystem, atomic) and only then given its row; a failure at any step removes
the file, and a rejected Fireworks upload removes the dataset it was meant for. A crash between the move and
the row leaves a file without a row, which `FileStorage.remove_orphans` deletes at startup; no row ever points
at a missing or unvalidated file.

Layout under the data directory:
    incoming/upload-<pid>-<start>-<random>.part   uploads being received or validated (by that process)
    files/<file id>.jsonl                         OpenAI files
    datasets/<account>/<dataset id>-<random>.jsonl  Fireworks datasets
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import AsyncIterable, Callable
from pathlib import Path

from ember.tuning.dataset_report import ValidationReport
from ember.tuning.multipart_upload import (
    ReceivedUpload,
    UploadLimits,
    receive_multipart,
    upload_writer_gone,
)
from ember.tuning.ownership import OwnerScope
from ember.tuning.store import TuningStore
from ember.tuning.tuning_db import StoreConflictError, new_id
from ember.tuning.upload_store import DatasetRecord, FileRecord

DatasetValidator = Callable[[Path], ValidationReport]
"""Validates the JSONL file at a path for the served base model (see validation.validate_dataset)."""

FILE_PURPOSES = (
    "fine-tune",
    "batch",
)  # a batch file is validated by its own validator (FileStorage.validators)
_RESOURCE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class UploadRejectedError(ValueError):
    """The dataset failed validation; `report` says where (HTTP 400). Nothing was stored."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


class NotFoundError(LookupError):
    """No file or dataset with that id or name (HTTP 404)."""


class ConflictError(Exception):
    """The resource exists or is not in a state that allows the operation (HTTP 409)."""


class FileStorage:
    """OpenAI files and Fireworks datasets under one data directory, with their rows in `store`.

    `validate` runs on every upload before it is committed; it is CPU-bound (tokenization), so async
    callers run `create_file` / `upload_dataset` in a worker thread.
    """

    def __init__(
        self,
        data_dir: Path,
        store: TuningStore,
        validate: DatasetValidator,
        limits: UploadLimits | None = None,
        validators: dict[str, DatasetValidator] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.store = store
        self.validate = validate
        self.validators = {"fine-tune": validate, **(validators or {})}  # by purpose
        self.limits = limits or UploadLimits()
        self.incoming_dir = self.data_dir / "incoming"
        for folder in (self.incoming_dir, self.data_dir / "files", self.data_dir / "datasets"):
            folder.mkdir(parents=True, exist_ok=True)

    async def receive(self, content_type: str, body: AsyncIterable[bytes]) -> ReceivedUpload:
        return await receive_multipart(content_type, body, self.incoming_dir, self.limits)

    def file_path(self, record: FileRecord) -> Path:
        """Where a file's content lies (for GET /v1/files/{id}/content and the trainer)."""
        return self.data_dir / record.path

    def dataset_path(self, record: DatasetRecord) -> Path:
        if record.path is None:
            raise ConflictError(f"dataset {record.name!r} has no uploaded file yet")
        return self.data_dir / record.path

    # -- OpenAI files --------------------------------------------------------------------------------------

    def create_file(self, upload: ReceivedUpload, purpose: str, owner: str | None = None) -> FileRecord:
        """Validate and commit an upload as a file owned by the account `owner`; the upload is consumed
        (committed or deleted)."""
        try:
            purposes = [p for p in FILE_PURPOSES if p in self.validators]
            if purpose not in purposes:
                raise ValueError(f"purpose must be one of {', '.join(purposes)}, got {purpose!r}")
            report = self._validated(upload, self.validators[purpose])
            file_id = new_id("file")
            relative = f"files/{file_id}.jsonl"
            record = FileRecord(
                id=file_id,
                bytes=upload.bytes,
                created_at=int(time.time()),
                filename=upload.filename,
                purpose=purpose,
                status="processed",
                path=relative,
                example_count=report.example_count,
                estimated_token_count=report.estimated_token_count,
                validation=report.to_dict(),
                owner=owner,
            )
            self._commit(upload, relative, lambda: self.store.insert_file(record))
            return record
        finally:
            upload.discard()

    def add_output_file(self, source: Path, purpose: str, filename: str, owner: str | None) -> FileRecord:
        """Store a file the server wrote (a batch's output or error file) as an OpenAI file owned by `owner`;
        `source` is moved into place."""
        file_id = new_id("file")
        relative = f"files/{file_id}.jsonl"
        record = FileRecord(
            id=file_id,
            bytes=source.stat().st_size,
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
            status="processed",
            path=relative,
            owner=owner,
        )
        final = self.data_dir / relative
        os.replace(source, final)
        try:
            self.store.insert_file(record)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return record

    def delete_file(self, file_id: str, scope: OwnerScope | None = None) -> FileRecord:
        """Remove a file `scope` sees (another owner's file is not found)."""
        record = self.store.delete_file(file_id, scope)
        if record is None:
            raise NotFoundError(f"no file {file_id!r}")
        (self.data_dir / record.path).unlink(missing_ok=True)
        return record

    # -- Fireworks datasets --------------------------------------------------------------------------------

    def create_dataset(self, account: str, dataset_id: str, display_name: str | None = None) -> DatasetRecord:
        """A dataset waiting for its file (state UPLOADING)."""
        for what, value in (("account id", account), ("dataset id", dataset_id)):
            if not _RESOURCE_ID.fullmatch(value):
                raise ValueError(
                    f"{what} {value!r} must be 1-63 lowercase letters, digits or '-', starting alnum"
                )
        now = time.time()
        record = DatasetRecord(
            name=f"accounts/{account}/datasets/{dataset_id}",
            account=account,
            dataset_id=dataset_id,
            display_name=display_name or dataset_id,
            format="CHAT",
            state="UPLOADING",
            create_time=now,
            update_time=now,
        )
        try:
            self.store.insert_dataset(record)
        except StoreConflictError as error:
            raise ConflictError(f"dataset {record.name!r} already exists") from error
        return record

    def upload_dataset(self, name: str, upload: ReceivedUpload) -> DatasetRecord:
        """Validate and attach an upload to an UPLOADING dataset, making it READY.

        A rejected upload deletes the dataset, so a client can create it again with fixed data.
        """
        try:
            dataset = self.store.get_dataset(name)
            if dataset is None:
                raise NotFoundError(f"no dataset {name!r}")
            if dataset.state != "UPLOADING":
                raise ConflictError(f"dataset {name!r} is {dataset.state}; a dataset takes one upload")
            try:
                report = self._validated(upload)
            except UploadRejectedError:
                self.store.delete_dataset(name, only_state="UPLOADING")
                raise
            relative = f"datasets/{dataset.account}/{dataset.dataset_id}-{secrets.token_hex(4)}.jsonl"
            committed: list[DatasetRecord] = []

            def write_row() -> None:
                updated = self.store.complete_dataset_upload(
                    name,
                    filename=upload.filename,
                    bytes=upload.bytes,
                    path=relative,
                    example_count=report.example_count,
                    estimated_token_count=report.estimated_token_count,
                    validation=report.to_dict(),
                )
                if updated is None:
                    raise ConflictError(
                        f"dataset {name!r} was deleted or uploaded by another request meanwhile"
                    )
                committed.append(updated)

            self._commit(upload, relative, write_row)
            return committed[0]
        finally:
            upload.discard()

    def add_output_dataset(self, name: str, source: Path, example_count: int, filename: str) -> DatasetRecord:
        """Attach a file the server wrote (a batch job's results) to the UPLOADING dataset `name`, making it
        READY; `source` is moved into place. NotFoundError / ConflictError as for an upload."""
        dataset = self.store.get_dataset(name)
        if dataset is None:
            raise NotFoundError(f"no dataset {name!r}")
        relative = f"datasets/{dataset.account}/{dataset.dataset_id}-{secrets.token_hex(4)}.jsonl"
        final = self.data_dir / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        size = source.stat().st_size
        os.replace(source, final)
        updated = self.store.complete_dataset_upload(
            name, filename=filename, bytes=size, path=relative, example_count=example_count
        )
        if updated is None:
            final.unlink(missing_ok=True)
            raise ConflictError(f"dataset {name!r} is {dataset.state}; it cannot take the results")
        return updated

    def delete_dataset(self, name: str) -> DatasetRecord:
        record = self.store.delete_dataset(name)
        if record is None:
            raise NotFoundError(f"no dataset {name!r}")
        if record.path is not None:
            (self.data_dir / record.path).unlink(missing_ok=True)
        return record

    # -- housekeeping --------------------------------------------------------------------------------------

    def remove_orphans(self, min_age_s: float = 3600.0) -> list[Path]:
        """Delete stale incoming uploads and stored files that no row refers to; returns what was removed.

        An incoming `.part` file goes as soon as the process that was writing it is gone (its name says which:
        multipart_upload.incoming_upload_path), however new it is: a server killed mid-upload leaves nothing
        behind after its restart. Other files must be older than `min_age_s`, which keeps what an upload in
        flight (in this or another process) may still be committing.
        """
        cutoff = time.time() - min_age_s
        referenced = {
            record.path
            for account_dir in (self.data_dir / "datasets").iterdir()
            for record in self.store.list_datasets(account_dir.name)
        }
        removed = []
        for path in sorted(self.data_dir.glob("incoming/*")) + sorted(self.data_dir.glob("files/*")):
            incoming = path.parent.name == "incoming"
            writer_gone = upload_writer_gone(path) if incoming else None
            orphan = incoming or self.store.get_file(path.stem) is None
            if writer_gone or (orphan and writer_gone is None and path.stat().st_mtime < cutoff):
                path.unlink(missing_ok=True)
                removed.append(path)
        for path in sorted(self.data_dir.glob("datasets/*/*")):
            if path.relative_to(self.data_dir).as_posix() not in referenced and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def _validated(
        self, upload: ReceivedUpload, validate: DatasetValidator | None = None
    ) -> ValidationReport:
        report = (validate or self.validate)(upload.path)
        if not report.ok:
            raise UploadRejectedError(report)
        return report

    def _commit(self, upload: ReceivedUpload, relative: str, write_row: Callable[[], None]) -> None:
        """Move the validated upload into place, then write its row; undo the move if the row fails."""
        final = self.data_dir / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(upload.path, "rb") as received:
            os.fsync(received.fileno())  # the content reaches the disk before a row can point at it
        os.replace(upload.path, final)
        try:
            write_row()
        except BaseException:
            final.unlink(missing_ok=True)
            raise
