"""Fine-tuning jobs: OpenAI's /fine_tuning/jobs and Fireworks' /accounts/{a}/supervisedFineTuningJobs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.services import services_of
from ember.server.fine_tuning.file_objects import read_json_object

router = APIRouter()


@router.post("/fine_tuning/jobs")
async def create_job(request: Request) -> Response:
    body = await read_json_object(request)
    return JSONResponse(services_of(request).require_jobs().create(body))


@router.get("/fine_tuning/jobs")
async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> Response:
    return JSONResponse(services_of(request).require_jobs().list(after, limit))


@router.get("/fine_tuning/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().get(job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().cancel(job_id))


@router.get("/fine_tuning/jobs/{job_id}/events")
async def list_events(job_id: str, request: Request, after: str | None = None, limit: int = 20) -> Response:
    return JSONResponse(services_of(request).require_jobs().events(job_id, after, limit))


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(
    job_id: str, request: Request, after: str | None = None, limit: int = 10
) -> Response:
    return JSONResponse(services_of(request).require_jobs().checkpoints(job_id, after, limit))


@router.post("/accounts/{account}/supervisedFineTuningJobs/{job_id}:resume")
async def resume_fireworks_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().fireworks_resume(job_id))


@router.post("/accounts/{account}/supervisedFineTuningJobs")
async def create_fireworks_job(
    account: str,
    request: Request,
    supervisedFineTuningJobId: str | None = None,  # noqa: N803 - Fireworks' name
) -> Response:
    body = await read_json_object(request)
    jobs = services_of(request).require_jobs()
    return JSONResponse(jobs.fireworks_create(account, body, supervisedFineTuningJobId))


@router.get("/accounts/{account}/supervisedFineTuningJobs")
async def list_fireworks_jobs(
    account: str,
    request: Request,
    pageSize: int = 50,  # noqa: N803 - Fireworks' query parameter names
    pageToken: str | None = None,  # noqa: N803
) -> Response:
    return JSONResponse(services_of(request).require_jobs().fireworks_list(pageSize, pageToken))


@router.get("/accounts/{account}/supervisedFineTuningJobs/{job_id}")
async def get_fireworks_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().fireworks_get(job_id))


@router.delete("/accounts/{account}/supervisedFineTuningJobs/{job_id}")
async def delete_fireworks_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().fireworks_delete(job_id))
