"""JSON of the files and datasets APIs, and how fine-tuning failures become HTTP errors.

Jobs render through ember.tuning.job_objects (shared with the CLI); this module adds OpenAI's file object,
Fireworks' dataset object (int64 counts as strings, times in RFC 3339 with "Z", as Fireworks renders them) and
the mapping of the tuning package's exceptions onto OpenAI's error envelope.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.responses import JSONResponse

from ember.lora.errors import LoraError
from ember.server.common.errors import APIError
from ember.tuning.file_storage import ConflictError, NotFoundError, UploadRejectedError
from ember.tuning.job_request import JobRequestError
from ember.tuning.multipart_upload import InvalidUploadError, UploadTooLargeError
from ember.tuning.upload_store import DatasetRecord, FileRecord


def openai_file(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": record.status,
        "status_details": None,
        "expires_at": None,
    }


def fireworks_dataset(record: DatasetRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "displayName": record.display_name,
        "createTime": rfc3339(record.create_time),
        "updateTime": rfc3339(record.update_time),
        "state": record.state,
        "status": {"code": "OK", "message": ""},
        "format": record.format,
        "exampleCount": _int64(record.example_count),
        "estimatedTokenCount": _int64(record.estimated_token_count),
        "userUploaded": {},
    }


def rfc3339(unix: float) -> str:
    """Fireworks' timestamps: UTC with fractional seconds only when there are any."""
    moment = datetime.fromtimestamp(unix, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _int64(value: int | None) -> str:
    # proto3 JSON renders int64 as a string; an unknown count is 0, as Fireworks shows for a new dataset
    return str(value or 0)


def rejected_upload_response(error: UploadRejectedError) -> JSONResponse:
    """A 400 in OpenAI's envelope whose `error.validation` lists every problem with line and message index."""
    first = next((p for p in error.report.problems if p.severity == "error"), None)
    param = "file" if first is None or first.line is None else f"line {first.line}"
    if first is not None and first.message_index is not None:
        param += f", messages[{first.message_index}]"
    body = {
        "error": {
            "message": str(error),
            "type": "invalid_request_error",
            "param": param,
            "code": "invalid_file",
            "validation": error.report.to_dict(),
        }
    }
    return JSONResponse(body, status_code=400)


def tuning_api_error(exc: Exception, conflict_status: int = 409) -> APIError:
    """The HTTP error of a failure from the tuning package (anything else is re-raised by the caller)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, NotFoundError):
        return APIError(404, str(exc), code="not_found")
    if isinstance(exc, ConflictError):
        return APIError(conflict_status, str(exc), code="conflict")
    if isinstance(exc, UploadTooLargeError):
        return APIError(413, str(exc), param="file", code="file_too_large")
    if isinstance(exc, JobRequestError):
        return APIError(400, str(exc), param=exc.param, code="invalid_request")
    if isinstance(exc, InvalidUploadError):
        return APIError(400, str(exc), param="file", code="invalid_upload")
    if isinstance(exc, LoraError):
        return APIError(400, str(exc), code="invalid_adapter")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc))
    raise exc
