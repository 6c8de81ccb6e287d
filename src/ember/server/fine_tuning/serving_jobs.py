"""The server's fine-tuning runtime (the store, uploads and the job service over one data directory, started
and stopped with the app, and the bridge that serves a succeeded job's adapter), and the job routes over it.

Jobs train in a worker process (ember.tuning.job_runner); when one succeeds, its adapter is registered with the
engine under its output model name (the last part of Fireworks' outputModel, else the job id), also answering
to `accounts/<account>/models/<name>` and the job's `ft:<base>:<suffix>:<job id>` name. At start-up the
adapters of every job that succeeded earlier are registered again, so a restart keeps serving them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ember.server.admin.serving_adapters import AdapterServing
from ember.server.batches.input_file import looks_like_batch_rows, validate_batch_file
from ember.server.common.config import FineTuningConfig
from ember.server.common.errors import APIError
from ember.server.common.tenancy import Tenant
from ember.server.fine_tuning.file_objects import tuning_api_error
from ember.tuning.dataset_shards import remove_stale_parts
from ember.tuning.file_storage import ConflictError, FileStorage, NotFoundError
from ember.tuning.job_objects import (
    event_cursor,
    fireworks_job,
    fireworks_job_request,
    fireworks_output_model,
    openai_checkpoint,
    openai_event_list,
    openai_job,
    openai_job_list,
    openai_job_request,
)
from ember.tuning.job_request import JobRequestError
from ember.tuning.job_runner import RunnerConfig
from ember.tuning.job_service import FineTuningService, tuning_db_path
from ember.tuning.job_store import JobRecord
from ember.tuning.masking import ConversationMasker
from ember.tuning.multipart_upload import UploadLimits
from ember.tuning.ownership import sees
from ember.tuning.store import TuningStore
from ember.tuning.validation import ValidationOptions, validate_dataset

if TYPE_CHECKING:
    from pathlib import Path

    from ember.engine.async_engine import AsyncEngine
    from ember.tuning.dataset_report import ValidationReport

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class JobAdapterNames:
    """The names a succeeded job's adapter is served under."""

    lora_id: str
    aliases: tuple[str, ...]


def job_adapter_names(job: JobRecord) -> JobAdapterNames:
    output_model = fireworks_output_model(job)  # accounts/<a>/models/<name>
    ft_name = job.fine_tuned_model or job.metadata.get("fine_tuned_model")
    aliases = tuple(name for name in (output_model, ft_name) if name)
    return JobAdapterNames(output_model.rsplit("/", 1)[-1], aliases)


class FineTuningRuntime:
    """Everything the files, datasets and fine-tuning routes use; `start` in the app's lifespan."""

    def __init__(
        self,
        engine: AsyncEngine,
        model_name: str,
        config: FineTuningConfig,
        adapters: AdapterServing,
        account: str = "fireworks",
    ) -> None:
        self.config = config
        self.account = account  # the server's own: it owns the jobs that have no owner
        self.engine = engine
        self.adapters = adapters
        data_dir = config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = TuningStore(tuning_db_path(data_dir))
        loaded = engine.engine.model
        self.masker = ConversationMasker.for_model(loaded)
        self.max_context_length = engine.max_model_len
        self.files = FileStorage(
            data_dir,
            self.store,
            self.validate,
            UploadLimits(max_file_bytes=config.max_upload_bytes),
            validators={"batch": validate_batch_file},
        )
        base_path = config.base_model_path or loaded.source_path
        self.service = FineTuningService(
            self.store,
            data_dir,
            {model_name: base_path},
            runner_config=RunnerConfig(
                poll_interval_s=config.poll_interval_s, worker_threads=config.worker_threads
            ),
            on_succeeded=self._job_succeeded,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        adapters.allow_job_folders(data_dir, self.job_visible)

    def job_visible(self, job_id: str, tenant: Tenant) -> bool:
        return self.store.get_job(job_id, tenant.scope) is not None

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def validate(self, path: Path) -> ValidationReport:
        """Upload validation with the served model's own chat template and tokenizer; a Fireworks dataset of
        batch requests (rows of custom_id and body) is checked as a batch input instead."""
        if looks_like_batch_rows(path):
            return validate_batch_file(path, url_required=False)
        options = ValidationOptions(max_context_length=self.max_context_length)
        return validate_dataset(path, options, self.masker.count_tokens)

    async def start(self) -> None:
        """Serve the adapters of jobs that succeeded before, then start the job queue (and its worker)."""
        self._loop = asyncio.get_running_loop()
        self.files.remove_orphans()
        remove_stale_parts(self.data_dir)  # signed-URL uploads a killed server left half-written
        for job in self.service.succeeded_jobs():
            await self.serve_job_adapter(job)
        await asyncio.to_thread(self.service.start)

    async def stop(self) -> None:
        """Stops the runner and its worker; a running job stays `running` and resumes at the next start."""
        await asyncio.to_thread(self.service.stop)

    async def serve_job_adapter(self, job: JobRecord, *, strict: bool = False) -> None:
        """Serve a job's adapter. At start-up (not strict) a broken adapter is logged and skipped, so one bad
        adapter does not keep the server or the others down; for a job about to succeed (strict) it raises."""
        names = job_adapter_names(job)
        if self.adapters.models.adapter(names.lora_id, any_owner=True) is not None:
            return
        path = self.service.adapter_path(job)
        try:
            if not path.is_dir():
                raise FileNotFoundError(f"the adapter folder {path} is missing")
            await self.adapters.load(
                names.lora_id,
                str(path),
                names.aliases,
                check_base_model=False,
                owner=job.owner or self.account,  # a fine-tuned model is its owner's (and the admins')
            )
        except Exception:
            if strict:
                raise
            logger.exception("cannot serve the adapter of job %s", job.id)
            return
        logger.info("serving the adapter of job %s as %s", job.id, ", ".join(names.aliases))

    def _job_succeeded(self, job: JobRecord) -> None:
        # Called on the job runner's thread before the job turns succeeded: the registration runs on the
        # server's event loop, and an exception fails the job rather than leave a succeeded job uncallable.
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError("the server is shutting down")
        future = asyncio.run_coroutine_threadsafe(self.serve_job_adapter(job, strict=True), self._loop)
        future.result(timeout=120)


class JobsServing:
    """The OpenAI and Fireworks job routes over one FineTuningService; both APIs see the same jobs."""

    def __init__(self, runtime: FineTuningRuntime) -> None:
        self.service = runtime.service

    # -- OpenAI ---------------------------------------------------------------------------------------------

    def create(self, body: dict[str, Any], tenant: Tenant) -> dict[str, Any]:
        def create() -> JobRecord:
            # The job's Fireworks name and output model live under the caller's account, which owns the job.
            request = openai_job_request(body)
            request = replace(request, extra_metadata={"fireworks": {"account": tenant.account}})
            return self.service.create_job(request, owner=tenant.account, scope=tenant.scope)

        return openai_job(self._call(create))

    def list(self, after: str | None, limit: int, tenant: Tenant) -> dict[str, Any]:
        _check_limit(limit)
        page = self._call(
            lambda: self.service.list_jobs(after=after, limit=limit, scope=tenant.scope), "after"
        )
        return openai_job_list(page)

    def get(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        return openai_job(self._visible_job(job_id, tenant))

    def cancel(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        self._visible_job(job_id, tenant)
        # OpenAI answers a cancel of a job that already ended with a 400
        return openai_job(self._call(lambda: self.service.cancel_job(job_id), conflict_status=400))

    def events(self, job_id: str, after: str | None, limit: int, tenant: Tenant) -> dict[str, Any]:
        _check_limit(limit)
        cursor = self._call(lambda: event_cursor(after), "after")
        self._visible_job(job_id, tenant)
        return openai_event_list(self._call(lambda: self.service.list_events(job_id, cursor, limit)))

    def checkpoints(self, job_id: str, after: str | None, limit: int, tenant: Tenant) -> dict[str, Any]:
        _check_limit(limit)
        self._visible_job(job_id, tenant)
        checkpoints = [
            openai_checkpoint(c) for c in self._call(lambda: self.service.list_checkpoints(job_id))
        ]
        if after is not None:
            ids = [c["id"] for c in checkpoints]
            if after not in ids:
                raise APIError(400, f"unknown pagination cursor 'after': {after!r}", param="after")
            checkpoints = checkpoints[ids.index(after) + 1 :]
        page = checkpoints[:limit]
        return {
            "object": "list",
            "data": page,
            "has_more": len(checkpoints) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }

    # -- Fireworks ------------------------------------------------------------------------------------------

    def fireworks_create(
        self, account: str, body: dict[str, Any], job_id: str | None, tenant: Tenant
    ) -> dict[str, Any]:
        # The path's account owns the job (the auth middleware let only its keys and admins through).
        def create() -> JobRecord:
            request = fireworks_job_request(account, body, job_id)
            output_model = request.extra_metadata["fireworks"]["outputModel"]
            if output_model is not None and not output_model.startswith(f"accounts/{account}/models/"):
                # the model is served under that name: another account's namespace is not the caller's to fill
                raise JobRequestError(
                    f"outputModel must be a model of the job's account (accounts/{account}/models/<id>), "
                    f"got {output_model!r}",
                    "outputModel",
                )
            return self.service.create_job(request, owner=account, scope=tenant.scope)

        return fireworks_job(self._call(create))

    def fireworks_list(
        self, page_size: int, page_token: str | None, jobs_url: str, tenant: Tenant
    ) -> dict[str, Any]:
        """Every supervised job the caller sees, whichever API created it (DPO jobs are under dpoJobs)."""
        _check_limit(page_size, "pageSize")
        page = self._call(
            lambda: self.service.list_jobs(
                after=page_token or None, limit=page_size, scope=tenant.scope, method="supervised"
            ),
            "pageToken",
        )
        jobs = [fireworks_job(job, self.service.latest_metrics(job.id), jobs_url) for job in page.data]
        next_token = page.data[-1].id if page.has_more and page.data else ""
        return {"supervisedFineTuningJobs": jobs, "nextPageToken": next_token, "totalSize": len(jobs)}

    def fireworks_get(self, job_id: str, jobs_url: str, tenant: Tenant) -> dict[str, Any]:
        job = self._supervised_job(job_id, tenant)
        return fireworks_job(job, self.service.latest_metrics(job_id), jobs_url)

    def fireworks_metrics(self, job_id: str, tenant: Tenant) -> str:
        """The job's metrics file: one JSON object per training step (loss, token accuracy, validation)."""
        self._supervised_job(job_id, tenant)
        rows = self._call(lambda: self.service.metrics_history(job_id))
        return "".join(json.dumps(row) + "\n" for row in rows)

    def fireworks_delete(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        self._supervised_job(job_id, tenant)
        self._call(lambda: self.service.delete_job(job_id))
        return {}

    def fireworks_cancel(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        """Fireworks answers a cancel with an empty object; a job that already ended is a 400
        (FAILED_PRECONDITION), as OpenAI answers."""
        self._supervised_job(job_id, tenant)
        self._call(lambda: self.service.cancel_job(job_id), conflict_status=400)
        return {}

    def fireworks_resume(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        self._supervised_job(job_id, tenant)
        job = self._call(lambda: self.service.resume_job(job_id), conflict_status=400)
        return fireworks_job(job, self.service.latest_metrics(job_id))

    def _supervised_job(self, job_id: str, tenant: Tenant) -> JobRecord:
        """A supervised job for the supervisedFineTuningJobs routes (a DPO job is Fireworks' dpoJobs resource)."""
        job = self._visible_job(job_id, tenant)
        if job.method != "supervised":
            raise tuning_api_error(NotFoundError(f"no supervised fine-tuning job {job_id!r}"))
        return job

    def _visible_job(self, job_id: str, tenant: Tenant) -> JobRecord:
        """The job, or the same 404 as for a missing one when it is another account's."""
        job = self._call(lambda: self.service.get_job(job_id))
        if not sees(tenant.scope, job.owner):
            raise tuning_api_error(NotFoundError(f"no fine-tuning job {job_id!r}"))
        return job

    @staticmethod
    def _call(action: Callable[[], T], param: str | None = None, conflict_status: int = 409) -> T:
        try:
            return action()
        except (LookupError, ValueError, ConflictError) as error:
            api_error = tuning_api_error(error, conflict_status)
            if api_error.param is None and param is not None and not isinstance(error, LookupError):
                api_error.param = param
            raise api_error from error


def _check_limit(limit: int, param: str = "limit") -> None:
    if not 1 <= limit <= 1000:
        raise APIError(400, f"{param} must be between 1 and 1000, got {limit}", param=param)
