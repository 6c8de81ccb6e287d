"""What a Fireworks batch inference job runs: its model, its input dataset and its requests, either from a
dataset of `{"custom_id", "body"}` rows (each body over the job's inferenceParameters, on the job's model), or,
for a job that continues a finished one (continuedFromJobName), that job's requests that did not succeed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ember.server.batches.input_file import BatchLine
from ember.server.batches.protocol import FireworksJobCreate, job_body_defaults
from ember.server.batches.store import BatchStore
from ember.server.common.errors import APIError, invalid_request
from ember.server.common.model_registry import ModelRegistry
from ember.server.common.served_models import ServedModels
from ember.tuning.file_storage import FileStorage
from ember.tuning.upload_store import DatasetRecord

FINISHED = ("completed", "failed", "expired", "cancelled")
RowReader = Callable[[Path, bool, str], list[BatchLine]]  # path, url_required, the parameter that named it


@dataclass(frozen=True)
class JobRequests:
    model: str
    input_dataset: str  # the dataset's full name
    lines: list[BatchLine]


class FireworksRequests:
    def __init__(
        self, store: BatchStore, files: FileStorage, models: ServedModels | ModelRegistry, read: RowReader
    ) -> None:
        self.store = store
        self.files = files
        self.models = models
        self.read = read

    async def of(self, account: str, body: FireworksJobCreate) -> JobRequests:
        if body.continuedFromJobName:
            return self._continuation(account, body, body.continuedFromJobName)
        for name in ("model", "inputDatasetId"):
            if not getattr(body, name):
                raise invalid_request(
                    f"{name} is required (unless continuedFromJobName is given)", param=name
                )
        assert body.model is not None and body.inputDatasetId is not None
        model = self.models.resolve(body.model)  # 404 naming it when this server does not serve it
        defaults = job_body_defaults(body.inferenceParameters)
        dataset = self.dataset(account, body.inputDatasetId)
        rows = await asyncio.to_thread(self.read, self.files.dataset_path(dataset), False, "inputDatasetId")
        lines = [BatchLine(r.line, r.custom_id, r.url, {**defaults, **r.body, "model": model}) for r in rows]
        return JobRequests(model, dataset.name, lines)

    def _continuation(self, account: str, body: FireworksJobCreate, given: str) -> JobRequests:
        """The finished job's requests that did not succeed (failed, or never ran because it was cancelled or
        expired), as they were, on its model unless `model` names another."""
        name = given if "/" in given else f"accounts/{account}/batchInferenceJobs/{given}"
        previous = self.store.get(name)
        if previous is None or previous.api != "fireworks" or not name.startswith(f"accounts/{account}/"):
            raise APIError(
                404, f"no batch inference job {name!r}", param="continuedFromJobName", code="not_found"
            )
        if previous.status not in FINISHED:
            raise invalid_request(
                f"job {name!r} is {previous.status}; a job can continue only one that has finished",
                param="continuedFromJobName",
            )
        if body.inputDatasetId and self.dataset(account, body.inputDatasetId).name != previous.input_file_id:
            raise invalid_request(
                f"a continued job runs over its first job's input dataset {previous.input_file_id!r}",
                param="inputDatasetId",
            )
        if body.inferenceParameters is not None:
            raise invalid_request(
                "a continued job runs its requests with the first job's inferenceParameters; leave them out",
                param="inferenceParameters",
            )
        model = self.models.resolve(body.model) if body.model else (previous.model or "")
        lines = [
            BatchLine(x.line, x.custom_id, x.url, {**x.body, "model": model})
            for x in self.store.lines(previous.id)
            if x.state != "completed"
        ]
        if not lines:
            raise invalid_request(
                f"every request of job {name!r} succeeded; there is nothing to continue",
                param="continuedFromJobName",
            )
        return JobRequests(model, previous.input_file_id, lines)

    def dataset(self, account: str, given: str) -> DatasetRecord:
        name = f"accounts/{account}/datasets/{dataset_id(given, account, 'inputDatasetId')}"
        dataset = self.files.store.get_dataset(name)
        if dataset is None:
            raise APIError(404, f"no dataset {name!r}", param="inputDatasetId", code="not_found")
        if dataset.state != "READY":
            raise invalid_request(
                f"dataset {name!r} is {dataset.state}; upload its file first", param="inputDatasetId"
            )
        return dataset


def dataset_id(given: str, account: str, param: str) -> str:
    """A dataset id from an id or a full name (`accounts/<a>/datasets/<id>`), which must be in `account`."""
    if "/" not in given:
        return given
    parts = given.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "datasets":
        raise invalid_request(
            f"{param} must be a dataset id or accounts/<account>/datasets/<id>", param=param
        )
    if parts[1] != account:
        raise invalid_request(f"{param} {given!r} is not a dataset of account {account!r}", param=param)
    return parts[3]
