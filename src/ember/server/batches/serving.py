"""OpenAI's /v1/batches and Fireworks' batchInferenceJobs over one runtime: the batches db, the runner, and the
files and datasets of the fine-tuning runtime (input files, output and error files, output datasets).

A batch belongs to the account of the key that created it; other accounts get 404s, as for a missing batch.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any

from ember.server.batches.fireworks_requests import FireworksRequests, dataset_id
from ember.server.batches.input_file import BatchLine, read_batch_lines
from ember.server.batches.line_runner import LineRunner
from ember.server.batches.objects import fireworks_job, openai_batch
from ember.server.batches.protocol import (
    BatchCreate,
    FireworksJobCreate,
    check_fireworks_job,
)
from ember.server.batches.runner import LINES_IN_FLIGHT, BatchRunner
from ember.server.batches.store import DB_FILE, BatchRecord, BatchStore
from ember.server.common.config import ServerConfig
from ember.server.common.errors import APIError, invalid_request
from ember.server.common.model_registry import ModelRegistry
from ember.server.common.served_models import ServedModels
from ember.server.common.services import Services
from ember.server.common.tenancy import Tenant
from ember.server.fine_tuning.file_objects import tuning_api_error
from ember.server.fine_tuning.serving_jobs import FineTuningRuntime

COMPLETION_WINDOW_S = {"24h": 24 * 3600}
_RESOURCE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
CANCELLABLE = ("validating", "in_progress")


class BatchesServing:
    def __init__(
        self,
        runtime: FineTuningRuntime,
        lines: LineRunner,
        models: ServedModels | ModelRegistry,
        account: str,
        lines_in_flight: int = LINES_IN_FLIGHT,
        max_line_bytes: int | None = None,
    ) -> None:
        self.max_line_bytes = max_line_bytes  # a line is a request: the request body limit applies
        self.files = runtime.files
        self.tuning_store = runtime.store
        self.models = models
        self.store = BatchStore(runtime.data_dir / DB_FILE)
        self.runner = BatchRunner(self.store, runtime.files, lines, account, lines_in_flight)
        self.fireworks_requests = FireworksRequests(self.store, runtime.files, models, self._read)

    @classmethod
    def build(
        cls,
        runtime: FineTuningRuntime,
        services: Services,
        config: ServerConfig,
    ) -> BatchesServing:
        """The batches of a server with a data directory, each request run by the live routes' serving objects."""
        # A few requests at a time, within the rows the scheduler gives background work: more would queue on the
        # preparation threads live requests use too.
        state = services.state
        in_flight = min(LINES_IN_FLIGHT, state.engine.engine.config.scheduler.background_seq_limit)
        lines = LineRunner(services)
        # a Fireworks job may name any served model (its rows then run there, as OpenAI batch lines do)
        models = state.models if services.registry is None else services.registry
        return cls(runtime, lines, models, config.account, in_flight, config.max_body_bytes)

    async def start(self) -> None:
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    # -- OpenAI ------------------------------------------------------------------------------------------------

    async def create(self, body: BatchCreate, tenant: Tenant) -> dict[str, Any]:
        if body.output_expires_after is not None:
            raise invalid_request(
                "output_expires_after is not supported: output files are kept until deleted",
                param="output_expires_after",
                code="unsupported_parameter",
            )
        file = self.tuning_store.get_file(body.input_file_id, tenant.scope)
        if file is None:
            raise APIError(404, f"no file {body.input_file_id!r}", param="input_file_id", code="not_found")
        if file.purpose != "batch":
            raise invalid_request(
                f"file {file.id!r} has purpose {file.purpose!r}; a batch's input file must have purpose 'batch'",
                param="input_file_id",
            )
        lines = await asyncio.to_thread(self._read, self.files.file_path(file), True, "input_file_id")
        for line in lines:
            if line.url != body.endpoint:
                raise invalid_request(
                    f"line {line.line}: url {line.url!r} is not the batch's endpoint {body.endpoint!r}; every "
                    "request of a batch goes to its endpoint",
                    param="input_file_id",
                )
        now = int(time.time())
        record = BatchRecord(
            id=f"batch_{secrets.token_hex(12)}",
            api="openai",
            owner=tenant.account,
            endpoint=body.endpoint,
            input_file_id=file.id,
            completion_window=body.completion_window,
            status="in_progress",
            created_at=now,
            in_progress_at=now,
            expires_at=now + COMPLETION_WINDOW_S[body.completion_window],
            model=_one_model(lines),
            metadata=body.metadata,
        )
        return openai_batch(await self._created(record, lines))

    def get(self, batch_id: str, tenant: Tenant) -> dict[str, Any]:
        return openai_batch(self._openai(batch_id, tenant))

    def list(self, after: str | None, limit: int, tenant: Tenant) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise invalid_request(f"limit must be between 1 and 100, got {limit}", param="limit")
        try:
            records = self.store.page("openai", tenant.scope, after, limit + 1)
        except LookupError as error:
            raise invalid_request(str(error), param="after") from None
        data = [openai_batch(r) for r in records[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(records) > limit,
        }

    def cancel(self, batch_id: str, tenant: Tenant) -> dict[str, Any]:
        record = self._openai(batch_id, tenant)
        self._cancel(record)
        return openai_batch(self._openai(batch_id, tenant))

    # -- Fireworks ---------------------------------------------------------------------------------------------

    async def fireworks_create(
        self, account: str, body: FireworksJobCreate, job_id: str | None
    ) -> dict[str, Any]:
        check_fireworks_job(body)
        job_id = job_id or f"batch-{secrets.token_hex(6)}"
        if not _RESOURCE_ID.fullmatch(job_id):
            raise invalid_request(
                f"batchInferenceJobId {job_id!r} must be 1-63 lowercase letters, digits or '-', starting alnum",
                param="batchInferenceJobId",
            )
        name = f"accounts/{account}/batchInferenceJobs/{job_id}"
        if self.store.get(name) is not None:
            raise APIError(409, f"batch inference job {name!r} already exists", code="already_exists")
        requests = await self.fireworks_requests.of(account, body)
        output_id = dataset_id(body.outputDatasetId or f"{job_id}-output", account, "outputDatasetId")
        try:
            output = self.files.create_dataset(account, output_id, f"results of {name}")
        except Exception as error:  # noqa: BLE001 - mapped to 400/409
            raise tuning_api_error(error) from error
        now = int(time.time())
        record = BatchRecord(
            id=name,
            api="fireworks",
            owner=account,  # a Fireworks resource belongs to the account in its name, as datasets do
            endpoint="/v1/chat/completions",
            input_file_id=requests.input_dataset,
            completion_window="24h",
            status="in_progress",
            created_at=now,
            in_progress_at=now,
            expires_at=now + COMPLETION_WINDOW_S["24h"],
            model=requests.model,
            fireworks={
                "name": name,
                "displayName": body.displayName,
                "outputDatasetId": output.name,
                "outputDatasetName": output.name,
                "inferenceParameters": (
                    {}
                    if body.inferenceParameters is None
                    else body.inferenceParameters.model_dump(exclude_none=True)
                ),
                "precision": body.precision or "PRECISION_UNSPECIFIED",
                "continuedFromJobName": body.continuedFromJobName or "",
            },
        )
        try:
            return fireworks_job(await self._created(record, requests.lines))
        except BaseException:
            self.tuning_store.delete_dataset(output.name, only_state="UPLOADING")
            raise

    def fireworks_get(self, account: str, job_id: str, tenant: Tenant) -> dict[str, Any]:
        return fireworks_job(self._fireworks(account, job_id, tenant))

    def fireworks_list(
        self, account: str, page_size: int, page_token: str | None, tenant: Tenant
    ) -> dict[str, Any]:
        if page_size < 0:
            raise invalid_request(f"pageSize must not be negative, got {page_size}", param="pageSize")
        size = min(page_size or 50, 200)  # Fireworks: 50 unless given, values above 200 coerced to 200
        prefix = f"accounts/{account}/batchInferenceJobs/"
        try:
            # Fireworks lists by create time, ascending, unless told otherwise
            records = self.store.page("fireworks", tenant.scope, page_token or None, size + 1, prefix, False)
        except LookupError:
            raise invalid_request(f"unknown pageToken {page_token!r}", param="pageToken") from None
        page = records[:size]
        return {
            "batchInferenceJobs": [fireworks_job(r) for r in page],
            "nextPageToken": page[-1].id if len(records) > size else "",
        }

    def fireworks_delete(self, account: str, job_id: str, tenant: Tenant) -> dict[str, Any]:
        """Deletes the job (a running one is stopped first); its output dataset stays, unless it never got its
        results."""
        record = self._fireworks(account, job_id, tenant)
        self.runner.cancel(record.id)
        self.store.delete(record.id)
        output = (record.fireworks or {}).get("outputDatasetName")
        if output:
            self.tuning_store.delete_dataset(output, only_state="UPLOADING")
        return {}

    # -- shared ------------------------------------------------------------------------------------------------

    async def _created(self, record: BatchRecord, lines: list[BatchLine]) -> BatchRecord:
        try:
            await asyncio.to_thread(self.store.create, record, lines)  # thousands of rows: off the event loop
        except ValueError as error:
            raise APIError(409, str(error), code="already_exists") from None
        self.runner.wake()
        created = self.store.get(record.id)
        assert created is not None
        return created

    def _cancel(self, record: BatchRecord) -> None:
        if record.status in ("cancelling", "cancelled"):
            return
        if record.status not in CANCELLABLE or not self.store.set_status(
            record.id, "cancelling", only_from=CANCELLABLE, cancelling_at=int(time.time())
        ):
            current = self.store.get(record.id)
            status = current.status if current else "deleted"
            raise APIError(
                409, f"batch {record.id!r} is {status}; it cannot be cancelled", code="batch_not_cancellable"
            )
        self.runner.cancel(record.id)

    def _openai(self, batch_id: str, tenant: Tenant) -> BatchRecord:
        record = self.store.get(batch_id, tenant.scope)
        if record is None or record.api != "openai":
            raise APIError(404, f"no batch {batch_id!r}", param="batch_id", code="not_found")
        return record

    def _fireworks(self, account: str, job_id: str, tenant: Tenant) -> BatchRecord:
        name = f"accounts/{account}/batchInferenceJobs/{job_id}"
        record = self.store.get(name, tenant.scope)
        if record is None or record.api != "fireworks":
            raise APIError(404, f"no batch inference job {name!r}", code="not_found")
        return record

    def _read(self, path: Any, url_required: bool, param: str) -> list[BatchLine]:
        try:
            return read_batch_lines(path, url_required=url_required, max_line_bytes=self.max_line_bytes)
        except ValueError as error:
            raise invalid_request(f"the input is not a batch of requests: {error}", param=param) from None


def _one_model(lines: list[BatchLine]) -> str | None:
    """The batch's `model`: the one its requests name, when they all name the same."""
    models = {line.body.get("model") for line in lines}
    model = models.pop() if len(models) == 1 else None
    return model if isinstance(model, str) else None
