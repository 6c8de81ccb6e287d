"""The batch routes. OpenAI: POST/GET /batches, GET /batches/{id}, POST /batches/{id}/cancel. Fireworks:
POST/GET /accounts/{a}/batchInferenceJobs, GET/DELETE /accounts/{a}/batchInferenceJobs/{id}. Every route acts
for the caller's tenant: it sees only its own account's batches."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.batches.protocol import BatchCreate, FireworksJobCreate
from ember.server.batches.serving import BatchesServing
from ember.server.common.errors import invalid_request
from ember.server.common.openapi import json_body
from ember.server.common.protocol import read_body
from ember.server.common.services import services_of
from ember.server.common.tenancy import tenant_of

router = APIRouter()


def _batches(request: Request) -> BatchesServing:
    return services_of(request).require_batches()


@router.post("/batches")
@json_body(BatchCreate)
async def create_batch(request: Request) -> Response:
    body = await read_body(request, BatchCreate)
    return JSONResponse(await _batches(request).create(body, tenant_of(request)))


@router.get("/batches")
async def list_batches(request: Request, after: str | None = None, limit: int = 20) -> Response:
    return JSONResponse(_batches(request).list(after, limit, tenant_of(request)))


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, request: Request) -> Response:
    return JSONResponse(_batches(request).get(batch_id, tenant_of(request)))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> Response:
    return JSONResponse(_batches(request).cancel(batch_id, tenant_of(request)))


@router.post("/accounts/{account}/batchInferenceJobs")
@json_body(FireworksJobCreate)
async def create_batch_inference_job(
    account: str,
    request: Request,
    batchInferenceJobId: str | None = None,  # noqa: N803 - Fireworks' name
) -> Response:
    body = await read_body(request, FireworksJobCreate)
    # the job belongs to `account`, which the auth middleware keeps to the key's own
    return JSONResponse(await _batches(request).fireworks_create(account, body, batchInferenceJobId))


@router.get("/accounts/{account}/batchInferenceJobs")
async def list_batch_inference_jobs(
    account: str,
    request: Request,
    pageSize: int = 0,  # noqa: N803 - Fireworks' query parameter names
    pageToken: str | None = None,  # noqa: N803
    filter: str | None = None,  # noqa: A002
    orderBy: str | None = None,  # noqa: N803
    readMask: str | None = None,  # noqa: N803
) -> Response:
    _refuse_query(filter=filter, orderBy=orderBy, readMask=readMask)
    return JSONResponse(_batches(request).fireworks_list(account, pageSize, pageToken, tenant_of(request)))


@router.get("/accounts/{account}/batchInferenceJobs/{job_id}")
async def get_batch_inference_job(
    account: str,
    job_id: str,
    request: Request,
    readMask: str | None = None,  # noqa: N803
) -> Response:
    _refuse_query(readMask=readMask)
    return JSONResponse(_batches(request).fireworks_get(account, job_id, tenant_of(request)))


@router.delete("/accounts/{account}/batchInferenceJobs/{job_id}")
async def delete_batch_inference_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(_batches(request).fireworks_delete(account, job_id, tenant_of(request)))


def _refuse_query(**given: str | None) -> None:
    """Fireworks' list filters and field masks: not implemented, so refused rather than ignored ("*" is all
    fields, which is what is returned anyway)."""
    for name, value in given.items():
        if value not in (None, "", "*"):
            raise invalid_request(f"{name} is not supported by this server; leave it out", param=name)
