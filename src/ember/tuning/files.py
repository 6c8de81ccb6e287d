"""Uploads of training data: stream a multipart body to disk under a size limit, validate, then commit.

Nothing is half-stored: an upload is written to `incoming/`, validated there, moved into place with
`os.replace` (same filesystem, atomic) and only then given its row; a failure at any step removes the file,
and a rejected Fireworks upload removes the dataset it was meant for. A crash between the move and the row
leaves a file without a row, which `FileStorage.remove_orphans` deletes at startup; no row ever points at a
missing or unvalidated file.

Layout under the data directory:
    incoming/upload-<random>.part                 uploads being received or validated
    files/<file id>.jsonl                         OpenAI files
    datasets/<account>/<dataset id>-<random>.jsonl  Fireworks datasets
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from ember.tuning.dataset_report import ValidationReport
from ember.tuning.store import DatasetRecord, FileRecord, StoreConflictError, TuningStore, new_id

DatasetValidator = Callable[[Path], ValidationReport]
"""Validates the JSONL file at a path for the served base model (see validation.validate_dataset)."""

FILE_PURPOSES = ("fine-tune",)
_RESOURCE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class UploadTooLargeError(Exception):
    """The upload passed its size limit; the partial file is already deleted (HTTP 413)."""

    def __init__(self, limit_bytes: int, what: str = "the file") -> None:
        super().__init__(f"{what} is over the upload limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class InvalidUploadError(ValueError):
    """The request body is not a usable multipart upload (HTTP 400)."""


class UploadRejectedError(ValueError):
    """The dataset failed validation; `report` says where (HTTP 400). Nothing was stored."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


class NotFoundError(LookupError):
    """No file or dataset with that id or name (HTTP 404)."""


class ConflictError(Exception):
    """The resource exists or is not in a state that allows the operation (HTTP 409)."""


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = 512 * 2**20
    max_field_bytes: int = 64 * 2**10  # all non-file form fields together (e.g. `purpose`)

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1 or self.max_field_bytes < 1:
            raise ValueError(f"upload limits must be positive, got {self}")


@dataclass(frozen=True)
class ReceivedUpload:
    """A file part received into `incoming/`, not yet validated, plus the form's text fields."""

    path: Path
    filename: str
    bytes: int
    fields: dict[str, str]

    def discard(self) -> None:
        """Delete the received file if it was not committed (safe to call after a commit)."""
        self.path.unlink(missing_ok=True)


class MultipartReceiver:
    """Feeds body chunks to a streaming multipart parser, writing the `file_field` part straight to disk."""

    def __init__(
        self, content_type: str, incoming_dir: Path, limits: UploadLimits, file_field: str = "file"
    ) -> None:
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise InvalidUploadError(
                f"expected a multipart/form-data body with a boundary, got {content_type!r}"
            )
        self.limits = limits
        self.file_field = file_field
        self.path = _incoming_path(incoming_dir)
        self._out: BinaryIO | None = None
        self._file_seen = False
        self._filename = ""
        self._file_bytes = 0
        self._field_bytes = 0
        self._fields: dict[str, str] = {}
        self._part_name: str | None = None
        self._field_value = bytearray()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._ended = False
        self._parser = MultipartParser(
            options[b"boundary"],
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise InvalidUploadError(f"malformed multipart body: {error}") from error

    def finish(self) -> ReceivedUpload:
        self._parser.finalize()
        if not self._ended:
            raise InvalidUploadError("the multipart body ended before its closing boundary")
        if not self._file_seen:
            raise InvalidUploadError(f"the multipart body has no {self.file_field!r} file part")
        return ReceivedUpload(self.path, self._filename, self._file_bytes, dict(self._fields))

    def abort(self) -> None:
        """Close and delete the partial file."""
        if self._out is not None:
            self._out.close()
        self.path.unlink(missing_ok=True)

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._field_value = bytearray()

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field = bytearray()
        self._header_value = bytearray()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part_name = name
        if name != self.file_field:
            if b"filename" in options:
                raise InvalidUploadError(
                    f"unexpected file part {name!r}; send the file as {self.file_field!r}"
                )
            return
        if self._file_seen:
            raise InvalidUploadError(f"the multipart body has more than one {self.file_field!r} part")
        self._file_seen = True
        self._filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")[-255:]
        self._out = open(self.path, "wb")  # the file part is being received while this is set

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.limits.max_file_bytes:
                raise UploadTooLargeError(self.limits.max_file_bytes)
            self._out.write(data[start:end])
        else:
            self._field_bytes += end - start
            if self._field_bytes > self.limits.max_field_bytes:
                raise UploadTooLargeError(self.limits.max_field_bytes, "the text of the form's fields")
            self._field_value.extend(data[start:end])

    def _on_part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        elif self._part_name:
            self._fields[self._part_name] = self._field_value.decode("utf-8", "replace")

    def _on_end(self) -> None:
        self._ended = True


async def receive_multipart(
    content_type: str, body: AsyncIterable[bytes], incoming_dir: Path, limits: UploadLimits
) -> ReceivedUpload:
    """Receive a multipart body (e.g. Starlette's `request.stream()`); on any failure nothing is left on disk."""
    receiver = MultipartReceiver(content_type, incoming_dir, limits)
    try:
        async for chunk in body:
            receiver.feed(chunk)
        return receiver.finish()
    except BaseException:
        receiver.abort()
        raise


def receive_stream(
    chunks: Iterable[bytes], filename: str, incoming_dir: Path, limits: UploadLimits
) -> ReceivedUpload:
    """Receive raw file bytes (no multipart), e.g. a local file opened by the CLI, under the same size limit."""
    path = _incoming_path(incoming_dir)
    size = 0
    try:
        with open(path, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > limits.max_file_bytes:
                    raise UploadTooLargeError(limits.max_file_bytes)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return ReceivedUpload(path, filename, size, {})


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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.store = store
        self.validate = validate
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

    def create_file(self, upload: ReceivedUpload, purpose: str) -> FileRecord:
        """Validate and commit an upload as a file; the upload is consumed (committed or deleted)."""
        try:
            if purpose not in FILE_PURPOSES:
                raise ValueError(f"purpose must be one of {', '.join(FILE_PURPOSES)}, got {purpose!r}")
            report = self._validated(upload)
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
            )
            self._commit(upload, relative, lambda: self.store.insert_file(record))
            return record
        finally:
            upload.discard()

    def delete_file(self, file_id: str) -> FileRecord:
        record = self.store.delete_file(file_id)
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

        `min_age_s` keeps files an upload in flight (in this or another process) may still be committing.
        """
        cutoff = time.time() - min_age_s
        referenced = {
            record.path
            for account_dir in (self.data_dir / "datasets").iterdir()
            for record in self.store.list_datasets(account_dir.name)
        }
        removed = []
        for path in sorted(self.data_dir.glob("incoming/*")) + sorted(self.data_dir.glob("files/*")):
            orphan = path.parent.name == "incoming" or self.store.get_file(path.stem) is None
            if orphan and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        for path in sorted(self.data_dir.glob("datasets/*/*")):
            if path.relative_to(self.data_dir).as_posix() not in referenced and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def _validated(self, upload: ReceivedUpload) -> ValidationReport:
        report = self.validate(upload.path)
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


def _incoming_path(incoming_dir: Path) -> Path:
    incoming_dir.mkdir(parents=True, exist_ok=True)
    return incoming_dir / f"upload-{secrets.token_hex(8)}.part"
