"""What the fine-tuning HTTP routes and the CLI call: create, list, get, cancel, resume and delete jobs, and
read their events and checkpoints. Results are dataclasses (JobRecord, JobEvent, JobCheckpoint, pages);
job_objects.py renders them as OpenAI or Fireworks JSON.

A job's settings are resolved once, at creation, into its row: the OpenAI view in `hyperparameters`, and in
`metadata` everything the worker needs (base model path, dataset paths, trainer and LoRA settings, the name
of the fine-tuned model) plus the Fireworks fields when it came through that API. The worker then depends on
nothing but the row and the data directory.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ember.tuning.file_storage import ConflictError, NotFoundError
from ember.tuning.job_request import JobRequest, JobRequestError, resolve_settings
from ember.tuning.job_runner import JobRunner, RunnerConfig
from ember.tuning.job_store import JOB_METHODS, JobEvent, JobRecord
from ember.tuning.jobs import JobPaths
from ember.tuning.ownership import OwnerScope, sees
from ember.tuning.store import TuningStore
from ember.tuning.training_state import read_checkpoint_info
from ember.tuning.tuning_db import new_id

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
_JOB_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SUFFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TUNING_DB_FILE = "tuning.db"


def tuning_db_path(data_dir: Path) -> Path:
    """The SQLite store of files, datasets and jobs inside a data directory (server and CLI share it)."""
    return Path(data_dir) / TUNING_DB_FILE


@dataclass(frozen=True)
class JobPage:
    data: list[JobRecord]
    has_more: bool


@dataclass(frozen=True)
class EventPage:
    data: list[JobEvent]  # newest first, as OpenAI lists them
    has_more: bool


@dataclass(frozen=True)
class JobCheckpoint:
    job_id: str
    step: int
    epoch: int
    created_at: int
    train_loss: float | None
    valid_loss: float | None
    path: str  # relative to the data directory; a PEFT adapter folder
    fine_tuned_model_checkpoint: str
    metrics: dict[str, Any]  # OpenAI's checkpoint metrics (train_loss, train_mean_token_accuracy, ...)


class FineTuningService:
    """Jobs over one store and data directory. `base_models` maps the model names a job may name to a GGUF
    file or HF folder (None: the embedded default model). `on_succeeded(job)` runs in the server process when
    a job's training finished, with the adapter at `adapter_path(job)`, before the job turns `succeeded`: it
    makes the fine-tuned model callable (an exception fails the job instead)."""

    def __init__(
        self,
        store: TuningStore,
        data_dir: Path,
        base_models: Mapping[str, str | None],
        *,
        runner_config: RunnerConfig | None = None,
        on_succeeded: Callable[[JobRecord], None] | None = None,
    ) -> None:
        if not base_models:
            raise ValueError("FineTuningService needs at least one base model to train")
        self.store = store
        self.data_dir = Path(data_dir)
        self.base_models = dict(base_models)
        self.on_succeeded = on_succeeded
        self.runner = JobRunner(store, self.data_dir, runner_config, before_succeeded=self._job_trained)

    def start(self) -> None:
        """Recover jobs a previous server left running, then start processing the queue."""
        self.runner.start()

    def begin_stop(self) -> None:
        """No new job starts, and the running one is asked to pause; `stop` then waits for it."""
        self.runner.begin_stop()

    def stop(self) -> None:
        self.runner.stop()

    def adapter_path(self, job: JobRecord) -> Path:
        return JobPaths(self.data_dir, job.id).adapter

    def succeeded_jobs(self) -> list[JobRecord]:
        """Every succeeded job, oldest first: the adapters a server registers at start-up (jobs that ended
        while no server watched, e.g. run by `ember tune create`, never reach `on_succeeded`)."""
        return self.store.list_jobs_with_status(("succeeded",))

    # -- jobs ----------------------------------------------------------------------------------------------

    def create_job(
        self, request: JobRequest, owner: str | None = None, scope: OwnerScope | None = None
    ) -> JobRecord:
        """A job owned by the account `owner`, training only on files and datasets `scope` sees."""
        base_name, base_path = self._base_model(request.model)
        if request.method not in JOB_METHODS:
            raise JobRequestError(
                f"unknown method {request.method!r}; use one of {', '.join(JOB_METHODS)}", "method"
            )
        training_path, training_rows = self._dataset_path(
            request.training_file, "training_file", scope, request.method
        )
        validation_path = (
            None
            if request.validation_file is None
            else self._dataset_path(request.validation_file, "validation_file", scope, request.method)[0]
        )
        settings = resolve_settings(request, training_rows)
        trainer, lora = settings.trainer, settings.lora
        job_id = request.job_id or new_id("ftjob")
        if not _JOB_ID.fullmatch(job_id):
            raise JobRequestError(f"job id {job_id!r} must be lowercase letters, digits and dashes", "job_id")
        if request.suffix is not None and not _SUFFIX.fullmatch(request.suffix):
            raise JobRequestError("suffix must be 1-64 letters, digits, '_', '.' or '-'", "suffix")
        hyperparameters = settings.hyperparameters.as_openai()
        metadata = {
            **request.extra_metadata,
            "base_model_name": base_name,
            "base_model_path": base_path,
            "training_path": training_path,
            "validation_path": validation_path,
            "fine_tuned_model": f"ft:{base_name}:{request.suffix or ''}:{job_id}",
            "trainer": asdict(trainer),
            "lora": {**asdict(lora), "target_modules": list(lora.target_modules)},
        }
        if settings.dpo is not None:
            metadata["dpo"] = asdict(settings.dpo)
        job = JobRecord(
            id=job_id,
            status="validating_files",
            model=request.model,
            training_file=request.training_file,
            validation_file=request.validation_file,
            created_at=int(time.time()),
            hyperparameters=hyperparameters,
            suffix=request.suffix,
            seed=trainer.seed,
            metadata=metadata,
            owner=owner,
            method=request.method,
        )
        try:
            self.store.insert_job(job)
        except ValueError as error:  # StoreConflictError: the id is taken
            raise ConflictError(f"a fine-tuning job {job_id!r} already exists") from error
        auto = [name for name, value in _requested(request).items() if value is None]
        self.store.add_job_event(
            job_id,
            f"Created {'DPO' if request.method == 'dpo' else 'fine-tuning'} job {job_id}: "
            f"{settings.hyperparameters.describe()}; "
            + (
                f"{', '.join(auto)} resolved from {training_rows} training examples"
                if auto
                else "as requested"
            ),
            data={
                **hyperparameters,
                "learning_rate": trainer.learning_rate,
                "training_examples": training_rows,
                "auto": auto,
            },
        )
        self.runner.wake()
        return job

    def get_job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFoundError(f"no fine-tuning job {job_id!r}")
        return job

    def list_jobs(
        self,
        after: str | None = None,
        limit: int = 20,
        scope: OwnerScope | None = None,
        method: str | None = None,
    ) -> JobPage:
        """Newest first (the jobs `scope` sees, of `method` when given); `after` is the last job id of the
        previous page."""
        jobs = self.store.list_jobs(after=after, limit=limit + 1, scope=scope, method=method)
        return JobPage(jobs[:limit], len(jobs) > limit)

    def cancel_job(self, job_id: str) -> JobRecord:
        """Cancel a job that has not ended; a running worker stops before its next step."""
        active = ("validating_files", "queued", "running")
        if not self.store.update_job(
            job_id, status="cancelled", finished_at=int(time.time()), expect_status=active
        ):
            job = self.get_job(job_id)
            raise ConflictError(f"job {job_id} is {job.status} and cannot be cancelled")
        self.store.add_job_event(job_id, "Job cancelled")
        self.runner.wake()
        return self.get_job(job_id)

    def resume_job(self, job_id: str) -> JobRecord:
        """Queue a cancelled or failed job again; it continues from its last checkpoint."""
        job = self.get_job(job_id)
        metadata = {**job.metadata, "attempts": 0, "worker_pid": None}
        if not self.store.update_job(
            job_id,
            status="queued",
            error=None,
            finished_at=None,
            metadata=metadata,
            expect_status=("cancelled", "failed"),
        ):
            raise ConflictError(
                f"job {job_id} is {self.get_job(job_id).status}; only cancelled or failed jobs resume"
            )
        where = f"from {job.checkpoint_path}" if job.checkpoint_path else "from the start"
        self.store.add_job_event(job_id, f"Job resumed; training continues {where}")
        self.runner.wake()
        return self.get_job(job_id)

    def delete_job(self, job_id: str) -> JobRecord:
        """Remove a job, its events and checkpoints (a running job is cancelled first); its adapter stays."""
        self.store.update_job(
            job_id, status="cancelled", expect_status=("validating_files", "queued", "running")
        )
        job = self.store.delete_job(job_id)
        if job is None:
            raise NotFoundError(f"no fine-tuning job {job_id!r}")
        shutil.rmtree(JobPaths(self.data_dir, job_id).job_dir, ignore_errors=True)
        return job

    # -- events and checkpoints ----------------------------------------------------------------------------

    def list_events(self, job_id: str, after: int | None = None, limit: int = 20) -> EventPage:
        """Newest first; `after` is the seq of the last event of the previous page."""
        self.get_job(job_id)
        events = self.store.list_job_events(job_id, before_seq=after, limit=limit + 1, newest_first=True)
        return EventPage(events[:limit], len(events) > limit)

    def events_since(self, job_id: str, after_seq: int = 0, limit: int = 100) -> list[JobEvent]:
        """Oldest first after `after_seq`: for following a job live (the CLI's progress bar)."""
        return self.store.list_job_events(job_id, after_seq=after_seq, limit=limit)

    def latest_metrics(self, job_id: str) -> dict[str, Any] | None:
        """The data of the job's latest metrics event (step, progress 0..1, losses, accuracies); None before
        its first step."""
        for event in self.store.list_job_events(job_id, limit=50, newest_first=True):
            if event.type == "metrics" and event.data is not None:
                return event.data
        return None

    def metrics_history(self, job_id: str) -> list[dict[str, Any]]:
        """Every step's metrics, oldest first (the rows of Fireworks' metrics file)."""
        self.get_job(job_id)
        rows: list[dict[str, Any]] = []
        seq = 0
        while page := self.store.list_job_events(job_id, after_seq=seq, limit=10_000):
            rows += [e.data for e in page if e.type == "metrics" and e.data is not None]
            seq = page[-1].seq
        return rows

    def list_checkpoints(self, job_id: str) -> list[JobCheckpoint]:
        """Newest first."""
        job = self.get_job(job_id)
        folder = JobPaths(self.data_dir, job_id).checkpoints
        if not folder.is_dir():
            return []
        checkpoints = []
        for path in sorted(folder.glob("step-*"), reverse=True):
            info = read_checkpoint_info(path)
            name = job.metadata.get("fine_tuned_model", f"ft:{job.model}::{job_id}")
            checkpoints.append(
                JobCheckpoint(
                    job_id=job_id,
                    step=info.step,
                    epoch=info.epoch,
                    created_at=int(info.created_at),
                    train_loss=info.train_loss,
                    valid_loss=info.valid_loss,
                    path=str(path.relative_to(self.data_dir)),
                    fine_tuned_model_checkpoint=f"{name}:ckpt-step-{info.step}",
                    metrics=info.metrics
                    or {"step": info.step, "train_loss": info.train_loss, "valid_loss": info.valid_loss},
                )
            )
        return checkpoints

    # -- internals -----------------------------------------------------------------------------------------

    def _job_trained(self, job: JobRecord) -> None:
        if self.on_succeeded is not None:
            self.on_succeeded(job)

    def _base_model(self, model: str) -> tuple[str, str | None]:
        """(name, path) of the base model a request names, by its name or the last part of a Fireworks path."""
        for candidate in (model, model.rsplit("/", 1)[-1]):
            if candidate in self.base_models:
                path = self.base_models[candidate]
                return candidate, None if path is None else str(Path(path).absolute())
        known = ", ".join(sorted(self.base_models))
        raise JobRequestError(f"unknown base model {model!r}; this server can fine-tune: {known}", "model")

    def _dataset_path(self, name: str, param: str, scope: OwnerScope | None, method: str) -> tuple[str, int]:
        """(data-directory-relative path, rows) of an OpenAI file id or a Fireworks dataset name (one `scope`
        sees: another owner's data is as unknown as a missing one) whose rows suit `method`."""
        if name.startswith("file-"):
            record = self.store.get_file(name, scope)
            if record is None:
                raise JobRequestError(f"no file {name!r}", param)
            if record.purpose != "fine-tune":
                raise JobRequestError(f"file {name!r} has purpose {record.purpose!r}, not 'fine-tune'", param)
            _check_format(name, param, record.validation, method)
            return record.path, self._rows(record.path, record.example_count)
        dataset = self.store.get_dataset(name)
        if dataset is None or not sees(scope, dataset.account):
            raise JobRequestError(f"no file or dataset {name!r}", param)
        if dataset.state != "READY" or dataset.path is None:
            raise JobRequestError(f"dataset {name!r} is {dataset.state}; upload its file first", param)
        _check_format(name, param, dataset.validation, method)
        return dataset.path, self._rows(dataset.path, dataset.example_count)

    def _rows(self, relative: str, recorded: int | None) -> int:
        """The example count validation recorded at upload, else the non-blank lines of the file."""
        if recorded is not None:
            return recorded
        with open(self.data_dir / relative, "rb") as lines:
            return sum(1 for line in lines if line.strip())


_FORMAT_OF_METHOD = {"supervised": "chat", "dpo": "preference"}
_FORMAT_ROWS = {
    "chat": "chat rows ('messages')",
    "preference": "preference rows ('input', 'preferred_output', 'non_preferred_output')",
}


def _check_format(name: str, param: str, validation: dict[str, Any] | None, method: str) -> None:
    """A DPO job trains on preference rows, a supervised one on chat rows (validation recorded which at upload;
    data uploaded before DPO existed is chat)."""
    found = (validation or {}).get("dataset_format", "chat")
    needed = _FORMAT_OF_METHOD[method]
    if found != needed:
        raise JobRequestError(
            f"{name} holds {_FORMAT_ROWS[found]}; a {method} job needs {_FORMAT_ROWS[needed]}", param
        )


def _requested(request: JobRequest) -> dict[str, object]:
    """The hyperparameters the auto rule fills in, as the request gave them (None: "auto")."""
    beta = {"beta": request.beta} if request.method == "dpo" else {}
    return {
        **beta,
        "n_epochs": request.n_epochs,
        "batch_size": request.batch_size,
        "learning_rate_multiplier": (
            request.learning_rate if request.learning_rate is not None else request.learning_rate_multiplier
        ),
    }
