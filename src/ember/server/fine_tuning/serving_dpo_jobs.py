"""Fireworks' DPO job routes (/v1/accounts/{a}/dpoJobs) over the fine-tuning runtime: create, get, list,
cancel, resume, delete and the metrics file. The jobs are the same rows OpenAI's /fine_tuning/jobs shows (with
method dpo); these routes see only DPO jobs, a supervised job's id is a 404 here."""

from __future__ import annotations

import json
from typing import Any

from ember.server.common.errors import APIError
from ember.server.common.tenancy import Tenant
from ember.server.fine_tuning.file_objects import tuning_api_error
from ember.server.fine_tuning.serving_jobs import JobsServing
from ember.tuning.file_storage import NotFoundError
from ember.tuning.fireworks_dpo import fireworks_dpo_job, fireworks_dpo_request
from ember.tuning.job_request import JobRequestError
from ember.tuning.job_store import JobRecord


class DpoJobsServing(JobsServing):
    def dpo_create(
        self, account: str, body: dict[str, Any], job_id: str | None, tenant: Tenant
    ) -> dict[str, Any]:
        # The path's account owns the job (the auth middleware let only its keys and admins through).
        def create() -> JobRecord:
            request = fireworks_dpo_request(account, body, job_id)
            output_model = request.extra_metadata["fireworks"]["outputModel"]
            if output_model is not None and not output_model.startswith(f"accounts/{account}/models/"):
                raise JobRequestError(
                    f"trainingConfig.outputModel must be a model of the job's account "
                    f"(accounts/{account}/models/<id>), got {output_model!r}",
                    "trainingConfig.outputModel",
                )
            return self.service.create_job(request, owner=account, scope=tenant.scope)

        return fireworks_dpo_job(self._call(create))

    def dpo_list(self, page_size: int, page_token: str | None, tenant: Tenant) -> dict[str, Any]:
        if not 1 <= page_size <= 1000:
            raise APIError(400, f"pageSize must be between 1 and 1000, got {page_size}", param="pageSize")
        page = self._call(
            lambda: self.service.list_jobs(
                after=page_token or None, limit=page_size, scope=tenant.scope, method="dpo"
            ),
            "pageToken",
        )
        next_token = page.data[-1].id if page.has_more and page.data else ""
        jobs = [fireworks_dpo_job(job) for job in page.data]
        return {"dpoJobs": jobs, "nextPageToken": next_token, "totalSize": len(jobs)}

    def dpo_get(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        return fireworks_dpo_job(self._dpo_job(job_id, tenant))

    def dpo_cancel(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        """An empty object, as Fireworks answers a cancel (and the SFT route does); an ended job is a 400."""
        self._dpo_job(job_id, tenant)
        self._call(lambda: self.service.cancel_job(job_id), conflict_status=400)
        return {}

    def dpo_resume(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        self._dpo_job(job_id, tenant)
        return fireworks_dpo_job(self._call(lambda: self.service.resume_job(job_id), conflict_status=400))

    def dpo_delete(self, job_id: str, tenant: Tenant) -> dict[str, Any]:
        self._dpo_job(job_id, tenant)
        self._call(lambda: self.service.delete_job(job_id))
        return {}

    def dpo_metrics_endpoint(self, job_id: str, metrics_url: str, tenant: Tenant) -> dict[str, Any]:
        """Where the job's metrics file is; Fireworks leaves the URL out until the file exists."""
        self._dpo_job(job_id, tenant)
        return {"signedUrl": metrics_url} if self.service.latest_metrics(job_id) is not None else {}

    def dpo_metrics(self, job_id: str, tenant: Tenant) -> str:
        """One JSON object per step: DPO loss, reward accuracy and margin, rewards and log-probabilities."""
        self._dpo_job(job_id, tenant)
        rows = self._call(lambda: self.service.metrics_history(job_id))
        return "".join(json.dumps(row) + "\n" for row in rows)

    def _dpo_job(self, job_id: str, tenant: Tenant) -> JobRecord:
        job = self._visible_job(job_id, tenant)
        if job.method != "dpo":
            raise tuning_api_error(NotFoundError(f"no DPO job {job_id!r}"))
        return job
