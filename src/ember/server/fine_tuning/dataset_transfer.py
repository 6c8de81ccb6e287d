"""Fireworks datasets moved through signed URLs, for uploads over `:upload`'s single request and for downloads:
`:getUploadEndpoint` registers the files and returns one signed PUT URL per file, the client PUTs each file's
bytes with no API key (as the fireworks-ai SDK's `upload_dataset_shards` does), `:validateUpload` joins the
files, validates them with the served model's template and makes the dataset READY; `:getDownloadEndpoint`
returns a signed GET URL serving the stored file.

Signed URLs point at this server (`/dataset-files/...`, outside the API prefixes: the URL is the permission),
built from the request's own base URL, so behind a TLS proxy that sets X-Forwarded-Proto they are https.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response

from ember.server.common.errors import APIError
from ember.server.common.read_mask import apply_read_mask
from ember.server.fine_tuning.file_objects import rejected_upload_response, tuning_api_error
from ember.server.fine_tuning.serving_jobs import FineTuningRuntime
from ember.server.fine_tuning.signed_urls import UrlSigner
from ember.tuning.dataset_shards import ShardError, ShardStaging, parse_shard_plan
from ember.tuning.file_storage import ConflictError, NotFoundError, UploadRejectedError
from ember.tuning.multipart_upload import UploadTooLargeError
from ember.tuning.upload_store import DatasetRecord

SIGNED_PREFIX = "/dataset-files"
_ENDPOINT_FIELDS = frozenset({"filenameToSignedUrls"})


def signed_file_path(account: str, dataset_id: str, filename: str) -> str:
    return f"{SIGNED_PREFIX}/{account}/{dataset_id}/{filename}"


class DatasetTransfers:
    def __init__(self, runtime: FineTuningRuntime, signer: UrlSigner | None = None) -> None:
        self.storage = runtime.files
        self.store = runtime.store
        self.shards = ShardStaging(runtime.data_dir / "dataset-uploads", runtime.data_dir / "incoming")
        self.signer = signer or UrlSigner()

    # -- the API routes (behind the API key) ----------------------------------------------------------------

    def upload_endpoint(
        self, account: str, dataset_id: str, body: dict[str, Any], base_url: str
    ) -> dict[str, Any]:
        """Register the files of an UPLOADING dataset (replacing an earlier registration) and sign a PUT URL
        for each."""
        dataset = self._dataset(account, dataset_id)
        if dataset.state != "UPLOADING":
            raise APIError(
                409,
                f"dataset {dataset.name!r} is {dataset.state}; a dataset takes one upload",
                code="conflict",
            )
        try:
            plan = parse_shard_plan(body.get("filenameToSize"), self.storage.limits.max_file_bytes)
        except ShardError as error:
            raise APIError(400, str(error), param=error.param) from error
        self.shards.register(account, dataset_id, plan)
        urls = {
            name: self.signer.sign(base_url, "PUT", signed_file_path(account, dataset_id, name))
            for name in plan.sizes
        }
        return apply_read_mask({"filenameToSignedUrls": urls}, body.get("readMask"), _ENDPOINT_FIELDS)

    async def validate_upload(self, account: str, dataset_id: str) -> Response:
        """Join the uploaded files, validate them and make the dataset READY. A rejected upload is the same 400
        as `:upload`'s (every problem with its line) and deletes the dataset, so it can be created again."""
        dataset = self._dataset(account, dataset_id)
        if dataset.state != "UPLOADING":
            raise APIError(
                409, f"dataset {dataset.name!r} is {dataset.state}; it was validated already", code="conflict"
            )
        try:
            upload = await asyncio.to_thread(self.shards.join, account, dataset_id)
            await asyncio.to_thread(self.storage.upload_dataset, dataset.name, upload)
        except UploadRejectedError as error:
            self.shards.discard(account, dataset_id)
            return rejected_upload_response(error)
        except (LookupError, ValueError, ConflictError) as error:
            raise tuning_api_error(error) from error
        self.shards.discard(account, dataset_id)
        return JSONResponse({})

    def download_endpoint(
        self, account: str, dataset_id: str, download_lineage: bool, read_mask: str | None, base_url: str
    ) -> dict[str, Any]:
        """One signed GET URL for the dataset's file. An ember dataset derives from no other, so its lineage
        is itself; with `downloadLineage` its file name is prefixed with the dataset id, as Fireworks names
        lineage files."""
        dataset = self._dataset(account, dataset_id)
        if dataset.state != "READY" or dataset.path is None:
            raise APIError(
                409,
                f"dataset {dataset.name!r} is {dataset.state}; it has no file to download",
                code="conflict",
            )
        url = self.signer.sign(base_url, "GET", signed_file_path(account, dataset_id, dataset_id + ".jsonl"))
        key = f"{dataset_id}/{dataset.filename}" if download_lineage else dataset.filename or dataset_id
        return apply_read_mask({"filenameToSignedUrls": {key: url}}, read_mask, _ENDPOINT_FIELDS)

    def discard_upload(self, account: str, dataset_id: str) -> None:
        """A deleted dataset's unfinished upload goes with it."""
        self.shards.discard(account, dataset_id)

    # -- the signed URLs (no API key: the signature is the permission) --------------------------------------

    async def receive_file(self, account: str, dataset_id: str, filename: str, http: Request) -> Response:
        self._verify(http)
        dataset = self.store.get_dataset(f"accounts/{account}/datasets/{dataset_id}")
        if dataset is None or dataset.state != "UPLOADING":
            raise APIError(409, f"dataset {dataset_id!r} is not waiting for an upload", code="conflict")
        declared = http.headers.get("content-length")
        plan = self.shards.plan(account, dataset_id)
        expected = None if plan is None else plan.sizes.get(filename)
        if declared is not None and expected is not None and declared != str(expected):
            raise APIError(
                400,
                f"{filename!r} was registered as {expected} bytes; Content-Length says {declared}",
                param="Content-Length",
            )
        try:
            await self.shards.receive(account, dataset_id, filename, http.stream())
        except ShardError as error:
            raise APIError(400, str(error), param=error.param) from error
        except (NotFoundError, ConflictError, UploadTooLargeError) as error:
            raise tuning_api_error(error) from error
        return Response(status_code=200)

    def send_file(self, account: str, dataset_id: str, http: Request) -> Response:
        self._verify(http)
        dataset = self.store.get_dataset(f"accounts/{account}/datasets/{dataset_id}")
        if dataset is None or dataset.path is None:
            raise APIError(404, f"dataset {dataset_id!r} has no file", code="not_found")
        return FileResponse(
            self.storage.dataset_path(dataset),
            media_type="application/jsonl",
            filename=dataset.filename if dataset.filename and "," not in dataset.filename else None,
        )

    def _verify(self, http: Request) -> None:
        params = http.query_params
        self.signer.verify(http.method, http.url.path, params.get("expires"), params.get("signature"))

    def _dataset(self, account: str, dataset_id: str) -> DatasetRecord:
        name = f"accounts/{account}/datasets/{dataset_id}"
        dataset = self.store.get_dataset(name)
        if dataset is None:
            raise APIError(404, f"no dataset {name!r}", param="dataset", code="not_found")
        return dataset
