"""OpenAI files and Fireworks datasets over the fine-tuning runtime's FileStorage.

Uploads stream to disk as they arrive (never held in memory), are validated with the served model's chat
template in a worker thread, and only then stored; a rejected upload is a 400 listing each problem with its line
and message index, and leaves nothing behind (a Fireworks dataset whose upload is rejected is deleted too).

A file belongs to the account of the key that uploaded it; other accounts' keys get 404s, as for a missing
file. A dataset belongs to the account in its name, which the auth middleware keeps to the key's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response

from ember.server.common.errors import APIError
from ember.server.common.tenancy import Tenant
from ember.server.fine_tuning.dataset_transfer import DatasetTransfers
from ember.server.fine_tuning.file_objects import (
    fireworks_dataset,
    openai_file,
    rejected_upload_response,
    tuning_api_error,
)
from ember.server.fine_tuning.serving_jobs import FineTuningRuntime
from ember.tuning.file_storage import UploadRejectedError
from ember.tuning.multipart_upload import ReceivedUpload, UploadTooLargeError

MULTIPART_OVERHEAD_BYTES = 64 * 2**10  # boundaries, part headers and small form fields around the file
_DATASET_OUTPUT_FIELDS = frozenset(
    {"name", "createTime", "updateTime", "state", "status", "estimatedTokenCount"}
)


class FilesServing:
    def __init__(self, runtime: FineTuningRuntime) -> None:
        self.runtime = runtime
        self.storage = runtime.files
        self.store = runtime.store
        self.transfers = DatasetTransfers(runtime)  # signed-URL uploads and downloads

    # -- OpenAI files ---------------------------------------------------------------------------------------

    async def create_file(self, http: Request, tenant: Tenant) -> Response:
        upload = await self._receive(http)
        purpose = upload.fields.get("purpose")
        if purpose is None:
            upload.discard()
            raise APIError(400, "purpose is required ('fine-tune' or 'batch')", param="purpose")
        try:
            record = await asyncio.to_thread(self.storage.create_file, upload, purpose, tenant.account)
        except UploadRejectedError as error:
            return rejected_upload_response(error)
        except ValueError as error:
            raise APIError(400, str(error), param="purpose") from error
        return JSONResponse(openai_file(record))

    def list_files(
        self, purpose: str | None, after: str | None, limit: int, tenant: Tenant
    ) -> dict[str, Any]:
        """The caller's files, newest first, as OpenAI lists them; `after` is the last file id of the previous
        page."""
        if not 1 <= limit <= 10_000:
            raise APIError(400, f"limit must be between 1 and 10000, got {limit}", param="limit")
        try:
            # one more than asked tells whether there is a next page (the store serves at most 10000 rows)
            records = self.store.list_files(
                purpose=purpose, after=after, limit=min(limit + 1, 10_000), scope=tenant.scope
            )
        except (LookupError, ValueError) as error:
            raise APIError(400, str(error), param="after") from error
        data = [openai_file(r) for r in records[:limit]]
        return {
            "object": "list",
            "data": data,
            "has_more": len(records) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def get_file(self, file_id: str, tenant: Tenant) -> dict[str, Any]:
        record = self.store.get_file(file_id, tenant.scope)  # another account's file is not found
        if record is None:
            raise APIError(404, f"no file {file_id!r}", param="file_id", code="not_found")
        return openai_file(record)

    def file_content(self, file_id: str, tenant: Tenant) -> Response:
        record = self.store.get_file(file_id, tenant.scope)
        if record is None:
            raise APIError(404, f"no file {file_id!r}", param="file_id", code="not_found")
        return FileResponse(self.storage.file_path(record), media_type="application/jsonl")

    def delete_file(self, file_id: str, tenant: Tenant) -> dict[str, Any]:
        try:
            record = self.storage.delete_file(file_id, tenant.scope)
        except LookupError as error:
            raise tuning_api_error(error) from error
        return {"id": record.id, "object": "file", "deleted": True}

    # -- Fireworks datasets ---------------------------------------------------------------------------------

    def create_dataset(self, account: str, body: dict[str, Any]) -> dict[str, Any]:
        dataset_id = body.get("datasetId")
        if not isinstance(dataset_id, str) or not dataset_id:
            raise APIError(400, "datasetId is required and must be a string", param="datasetId")
        dataset = body.get("dataset") or {}
        if not isinstance(dataset, dict):
            raise APIError(400, "dataset must be an object", param="dataset")
        display_name = dataset.get("displayName")
        try:
            record = self.storage.create_dataset(account, dataset_id, display_name)
        except Exception as error:  # noqa: BLE001 - mapped to 400/409 or re-raised
            raise tuning_api_error(error) from error
        return fireworks_dataset(record)

    async def upload_dataset(self, account: str, dataset_id: str, http: Request) -> Response:
        name = f"accounts/{account}/datasets/{dataset_id}"
        if self.store.get_dataset(name) is None:
            raise APIError(404, f"no dataset {name!r}; create it first", param="dataset", code="not_found")
        upload = await self._receive(http)
        try:
            record = await asyncio.to_thread(self.storage.upload_dataset, name, upload)
        except UploadRejectedError as error:
            return rejected_upload_response(error)
        except Exception as error:  # noqa: BLE001 - mapped to 404/409 or re-raised
            raise tuning_api_error(error) from error
        return JSONResponse({"dataset": fireworks_dataset(record)})

    def list_datasets(self, account: str) -> dict[str, Any]:
        datasets = [fireworks_dataset(r) for r in self.store.list_datasets(account)]
        return {"datasets": datasets, "nextPageToken": "", "totalSize": len(datasets)}

    def get_dataset(self, account: str, dataset_id: str) -> dict[str, Any]:
        name = f"accounts/{account}/datasets/{dataset_id}"
        record = self.store.get_dataset(name)
        if record is None:
            raise APIError(404, f"no dataset {name!r}", param="dataset", code="not_found")
        return fireworks_dataset(record)

    def update_dataset(self, account: str, dataset_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: the display name is a user's to change; ember derives the rest from the uploaded file, so a
        field that would change it is a 400 naming it (output-only fields sent back unchanged are ignored)."""
        name = f"accounts/{account}/datasets/{dataset_id}"
        record = self.store.get_dataset(name)
        if record is None:
            raise APIError(404, f"no dataset {name!r}", param="dataset", code="not_found")
        for field, value in body.items():
            if field in _DATASET_OUTPUT_FIELDS or (field == "userUploaded" and isinstance(value, dict)):
                continue  # every ember dataset is a user upload; output-only fields are ignored, as in Google APIs
            if field == "displayName":
                if not isinstance(value, str) or not 0 < len(value) <= 255:
                    raise APIError(
                        400, "displayName must be a string of 1-255 characters", param="displayName"
                    )
            elif field == "format" and value != record.format:
                raise APIError(
                    400, f"format must stay {record.format!r}: ember datasets are chat data", param="format"
                )
            elif field == "exampleCount" and str(value) != str(record.example_count or 0):
                raise APIError(
                    400,
                    "exampleCount is counted from the uploaded file and cannot be set",
                    param="exampleCount",
                )
            elif field not in ("format", "exampleCount"):
                raise APIError(
                    400,
                    f"{field} cannot be changed on this server: a dataset is the JSONL file uploaded to it",
                    param=field,
                )
        display_name = body.get("displayName")
        if display_name is not None:
            record = self.store.update_dataset(name, display_name) or record
        return fireworks_dataset(record)

    def delete_dataset(self, account: str, dataset_id: str) -> dict[str, Any]:
        try:
            self.storage.delete_dataset(f"accounts/{account}/datasets/{dataset_id}")
        except LookupError as error:
            raise tuning_api_error(error) from error
        self.transfers.discard_upload(account, dataset_id)
        return {}

    # -- uploads --------------------------------------------------------------------------------------------

    async def _receive(self, http: Request) -> ReceivedUpload:
        limit = self.storage.limits.max_file_bytes
        declared = http.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
            raise APIError(413, f"the file is over the upload limit of {limit} bytes", code="file_too_large")
        try:
            return await self.storage.receive(http.headers.get("content-type", ""), http.stream())
        except (UploadTooLargeError, ValueError) as error:
            raise tuning_api_error(error) from error
