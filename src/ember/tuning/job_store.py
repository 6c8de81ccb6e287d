"""Rows of fine-tuning jobs and their events in the tuning db.

A job's status only moves through `update_job`, which can require the status it expects, so a claim by the
worker and a cancel by a user cannot overwrite each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ember.tuning.ownership import OwnerScope, sees
from ember.tuning.tuning_db import TuningDb, check_choice, check_limit, check_names, from_row

JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
JOB_METHODS = ("supervised", "dpo")
EVENT_LEVELS = ("info", "warn", "error")


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: str
    model: str
    training_file: str
    created_at: int
    hyperparameters: dict[str, Any]
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None
    started_at: int | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    checkpoint_path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. the Fireworks job fields
    owner: str | None = None  # the account that created it (ownership.py)
    method: str = "supervised"  # or "dpo"


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    seq: int
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None


_JOB_UPDATABLE = frozenset(f.name for f in fields(JobRecord)) - {"id", "created_at", "owner", "method"}


class JobStore(TuningDb):
    """The `jobs` and `job_events` tables."""

    def insert_job(self, record: JobRecord) -> None:
        check_choice("job status", record.status, JOB_STATUSES)
        check_choice("job method", record.method, JOB_METHODS)
        self._insert("jobs", record)

    def get_job(self, job_id: str, scope: OwnerScope | None = None) -> JobRecord | None:
        """The job, or None when there is none or `scope` does not see it (another owner's job)."""
        record = self._get(JobRecord, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return record if record is not None and sees(scope, record.owner) else None

    def list_jobs(
        self,
        after: str | None = None,
        limit: int = 20,
        scope: OwnerScope | None = None,
        method: str | None = None,
    ) -> list[JobRecord]:
        """Newest first (only jobs of `method`, when given); `after` is the id of the last job of the previous
        page."""
        where, params = ("1", []) if scope is None else scope.where()
        if method is not None:
            check_choice("job method", method, JOB_METHODS)
            where, params = f"{where} AND method = ?", [*params, method]
        return self._page(JobRecord, "jobs", "id", "created_at", where, params, after, limit)

    def list_jobs_with_status(self, statuses: tuple[str, ...]) -> list[JobRecord]:
        """Oldest first, e.g. the queue a worker takes jobs from."""
        for status in statuses:
            check_choice("job status", status, JOB_STATUSES)
        marks = ", ".join("?" for _ in statuses)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created_at, rowid", statuses
            ).fetchall()
        return [from_row(JobRecord, row) for row in rows]

    def update_job(self, job_id: str, *, expect_status: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Set the given job fields; with `expect_status`, only if the job is in one of those statuses.

        Returns whether the job changed, so `update_job(id, status="running", expect_status=("queued",))` is
        an atomic claim and a cancel cannot be overwritten by a worker finishing at the same moment.
        """
        check_names(values, _JOB_UPDATABLE, "job")
        if "status" in values:
            check_choice("job status", values["status"], JOB_STATUSES)
        condition = None
        params: list[Any] = []
        if expect_status is not None:
            for status in expect_status:
                check_choice("job status", status, JOB_STATUSES)
            condition = f"status IN ({', '.join('?' for _ in expect_status)})"
            params = list(expect_status)
        with self._write() as conn:
            return self._update(conn, "jobs", "id", job_id, values, condition, params)

    def delete_job(self, job_id: str) -> JobRecord | None:
        """Remove the job and its events and return it (None when there was none)."""
        return self._delete(JobRecord, "jobs", "id", job_id)

    def add_job_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: Literal["message", "metrics"] = "message",
        data: dict[str, Any] | None = None,
    ) -> JobEvent:
        """Append an event; its `seq` is the next number of that job's events, unique under concurrent writers."""
        check_choice("event level", level, EVENT_LEVELS)
        check_choice("event type", type, ("message", "metrics"))
        created_at = int(time.time())
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise LookupError(f"no fine-tuning job {job_id!r}")
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            event = JobEvent(job_id, seq, created_at, level, message, type, data)
            self._insert_row(conn, "job_events", event)
        return event

    def list_job_events(
        self,
        job_id: str,
        *,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[JobEvent]:
        """Events with after_seq < seq < before_seq, oldest first (or newest first, as OpenAI pages them)."""
        check_limit(limit)
        order = "DESC" if newest_first else "ASC"
        sql = (
            "SELECT * FROM job_events WHERE job_id = ? AND seq > ? AND (? IS NULL OR seq < ?) "
            f"ORDER BY seq {order} LIMIT ?"
        )
        with self._connect() as conn:
            rows = conn.execute(sql, (job_id, after_seq, before_seq, before_seq, limit)).fetchall()
        return [from_row(JobEvent, row) for row in rows]
