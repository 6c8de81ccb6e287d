"""Receiving an upload: a multipart body (or raw bytes) streamed to a file in `incoming/` under a size limit.

What is received is not yet validated or stored; file_storage.py validates it and commits it or deletes it.
On any failure while receiving, the partial file is deleted here, so nothing is left in `incoming/`; a process
killed while receiving cannot delete it, so each `.part` name says which process writes it, and the next
start-up removes those whose writer is gone.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header


class UploadTooLargeError(Exception):
    """The upload passed its size limit; the partial file is already deleted (HTTP 413)."""

    def __init__(self, limit_bytes: int, what: str = "the file") -> None:
        super().__init__(f"{what} is over the upload limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class InvalidUploadError(ValueError):
    """The request body is not a usable multipart upload (HTTP 400)."""


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


def _incoming_path(incoming_dir: Path) -> Path:
    incoming_dir.mkdir(parents=True, exist_ok=True)
    return incoming_upload_path(incoming_dir)


def incoming_upload_path(incoming_dir: Path) -> Path:
    """A new `.part` name in `incoming/` that names its writer (pid and the process's start time), so a later
    start-up can tell an upload still in flight from one a killed process left behind (`upload_writer_gone`)."""
    pid = os.getpid()
    return incoming_dir / f"upload-{pid}-{_process_start(pid) or 0}-{secrets.token_hex(8)}.part"


def upload_writer_gone(path: Path) -> bool | None:
    """True when the process that named this `.part` file has exited, False while it runs; None when the name
    does not say (an older name) or this system cannot tell (no /proc)."""
    match = _PART_NAME.fullmatch(path.name)
    if match is None:
        return None
    pid, started = int(match["pid"]), int(match["started"])
    if started == 0:
        return None
    now = _process_start(pid)
    if now is None:
        return None if not Path("/proc/self/stat").exists() else True
    return now != started  # another process has that pid now: the writer is gone


_PART_NAME = re.compile(r"upload-(?P<pid>\d+)-(?P<started>\d+)-[0-9a-f]+\.part")


def _process_start(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (/proc/<pid>/stat field 22); None if it is gone
    or there is no /proc. Together with the pid it names one process: pids are reused, start times are not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces
    return int(fields[19])  # field 22 of the line; fields[0] is field 3 (state)
