"""The fine-tuning routes. OpenAI files: POST/GET /files, GET/DELETE /files/{id}, GET /files/{id}/content
(purpose fine-tune). Fireworks datasets: POST /accounts/{a}/datasets, POST .../datasets/{id}:upload, GET list/get,
PATCH, DELETE, and the signed-URL transfers (:getUploadEndpoint, :validateUpload, :getDownloadEndpoint, with the
signed /dataset-files/... URLs at the root). Jobs: OpenAI's /fine_tuning/jobs (supervised and DPO), Fireworks'
/accounts/{a}/supervisedFineTuningJobs and /accounts/{a}/dpoJobs. Every route acts
for the caller's tenant (tenancy.py): it sees only its own account's files, datasets and jobs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.openapi import json_body, multipart_body
from ember.server.common.protocol import read_json_object, validate_body
from ember.server.common.services import services_of
from ember.server.common.tenancy import tenant_of
from ember.server.fine_tuning.protocol import (
    DatasetCreate,
    DatasetUpdate,
    DatasetUpload,
    DatasetUploadEndpoint,
    DatasetValidateUpload,
    DpoJobCreate,
    FileUpload,
    FineTuningJobCreate,
    SupervisedFineTuningJobCreate,
)

router = APIRouter()
root_router = APIRouter()  # the signed URLs, outside the API prefixes: the signature is the permission


@router.post("/files")
@multipart_body(FileUpload)
async def create_file(request: Request) -> Response:
    return await services_of(request).require_files().create_file(request, tenant_of(request))


@router.get("/files")
async def list_files(
    request: Request, purpose: str | None = None, after: str | None = None, limit: int = 10_000
) -> Response:
    return JSONResponse(
        services_of(request).require_files().list_files(purpose, after, limit, tenant_of(request))
    )


@router.get("/files/{file_id}")
async def get_file(file_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().get_file(file_id, tenant_of(request)))


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    return services_of(request).require_files().file_content(file_id, tenant_of(request))


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().delete_file(file_id, tenant_of(request)))


@router.post("/accounts/{account}/datasets")
@json_body(DatasetCreate)
async def create_dataset(account: str, request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(DatasetCreate, body)  # JSON types; the values are checked by the storage
    return JSONResponse(services_of(request).require_files().create_dataset(account, body))


@router.post("/accounts/{account}/datasets/{dataset_id}:upload")
@multipart_body(DatasetUpload)
async def upload_dataset(account: str, dataset_id: str, request: Request) -> Response:
    return await services_of(request).require_files().upload_dataset(account, dataset_id, request)


@router.post("/accounts/{account}/datasets/{dataset_id}:getUploadEndpoint")
@json_body(DatasetUploadEndpoint)
async def dataset_upload_endpoint(account: str, dataset_id: str, request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(DatasetUploadEndpoint, body)
    transfers = services_of(request).require_files().transfers
    return JSONResponse(transfers.upload_endpoint(account, dataset_id, body, str(request.base_url)))


@router.post("/accounts/{account}/datasets/{dataset_id}:validateUpload")
@json_body(DatasetValidateUpload)
async def validate_dataset_upload(account: str, dataset_id: str, request: Request) -> Response:
    await read_json_object(request, allow_empty=True)
    return await services_of(request).require_files().transfers.validate_upload(account, dataset_id)


@router.get("/accounts/{account}/datasets/{dataset_id}:getDownloadEndpoint")
async def dataset_download_endpoint(
    account: str,
    dataset_id: str,
    request: Request,
    downloadLineage: bool = False,  # noqa: N803 - Fireworks' query parameter names
    readMask: str | None = None,  # noqa: N803
) -> Response:
    transfers = services_of(request).require_files().transfers
    return JSONResponse(
        transfers.download_endpoint(account, dataset_id, downloadLineage, readMask, str(request.base_url))
    )


@root_router.put("/dataset-files/{account}/{dataset_id}/{filename}", include_in_schema=False)
async def put_signed_dataset_file(account: str, dataset_id: str, filename: str, request: Request) -> Response:
    transfers = services_of(request).require_files().transfers
    return await transfers.receive_file(account, dataset_id, filename, request)


@root_router.get("/dataset-files/{account}/{dataset_id}/{filename}", include_in_schema=False)
async def get_signed_dataset_file(account: str, dataset_id: str, filename: str, request: Request) -> Response:
    return services_of(request).require_files().transfers.send_file(account, dataset_id, request)


@router.patch("/accounts/{account}/datasets/{dataset_id}")
@json_body(DatasetUpdate)
async def update_dataset(account: str, dataset_id: str, request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(DatasetUpdate, body)
    return JSONResponse(services_of(request).require_files().update_dataset(account, dataset_id, body))


@router.get("/accounts/{account}/datasets")
async def list_datasets(account: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().list_datasets(account))


@router.get("/accounts/{account}/datasets/{dataset_id}")
async def get_dataset(account: str, dataset_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().get_dataset(account, dataset_id))


@router.delete("/accounts/{account}/datasets/{dataset_id}")
async def delete_dataset(account: str, dataset_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().delete_dataset(account, dataset_id))


@router.post("/fine_tuning/jobs")
@json_body(FineTuningJobCreate)
async def create_job(request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(FineTuningJobCreate, body)  # JSON types; the values are checked by the job service
    return JSONResponse(services_of(request).require_jobs().create(body, tenant_of(request)))


@router.get("/fine_tuning/jobs")
async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> Response:
    return JSONResponse(services_of(request).require_jobs().list(after, limit, tenant_of(request)))


@router.get("/fine_tuning/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().get(job_id, tenant_of(request)))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().cancel(job_id, tenant_of(request)))


@router.get("/fine_tuning/jobs/{job_id}/events")
async def list_events(job_id: str, request: Request, after: str | None = None, limit: int = 20) -> Response:
    return JSONResponse(services_of(request).require_jobs().events(job_id, after, limit, tenant_of(request)))


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(
    job_id: str, request: Request, after: str | None = None, limit: int = 10
) -> Response:
    return JSONResponse(
        services_of(request).require_jobs().checkpoints(job_id, after, limit, tenant_of(request))
    )


@router.post("/accounts/{account}/supervisedFineTuningJobs/{job_id}:cancel")
async def cancel_fireworks_job(account: str, job_id: str, request: Request) -> Response:
    await read_json_object(request, allow_empty=True)  # the SDK sends {}
    return JSONResponse(services_of(request).require_jobs().fireworks_cancel(job_id, tenant_of(request)))


@router.post("/accounts/{account}/supervisedFineTuningJobs/{job_id}:resume")
async def resume_fireworks_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().fireworks_resume(job_id, tenant_of(request)))


@router.post("/accounts/{account}/supervisedFineTuningJobs")
@json_body(SupervisedFineTuningJobCreate)
async def create_fireworks_job(
    account: str,
    request: Request,
    supervisedFineTuningJobId: str | None = None,  # noqa: N803 - Fireworks' name
) -> Response:
    body = await read_json_object(request)
    validate_body(
        SupervisedFineTuningJobCreate, body
    )  # JSON types; the values are checked by the job service
    jobs = services_of(request).require_jobs()
    return JSONResponse(jobs.fireworks_create(account, body, supervisedFineTuningJobId, tenant_of(request)))


@router.get("/accounts/{account}/supervisedFineTuningJobs")
async def list_fireworks_jobs(
    account: str,
    request: Request,
    pageSize: int = 50,  # noqa: N803 - Fireworks' query parameter names
    pageToken: str | None = None,  # noqa: N803
) -> Response:
    jobs_url = str(request.url_for("list_fireworks_jobs", account=account))
    jobs = services_of(request).require_jobs()
    return JSONResponse(jobs.fireworks_list(pageSize, pageToken, jobs_url, tenant_of(request)))


@router.get("/accounts/{account}/supervisedFineTuningJobs/{job_id}")
async def get_fireworks_job(account: str, job_id: str, request: Request) -> Response:
    jobs_url = str(request.url_for("list_fireworks_jobs", account=account))
    jobs = services_of(request).require_jobs()
    return JSONResponse(jobs.fireworks_get(job_id, jobs_url, tenant_of(request)))


@router.get("/accounts/{account}/supervisedFineTuningJobs/{job_id}/metrics")
async def fireworks_job_metrics(account: str, job_id: str, request: Request) -> Response:
    """The file `metricsFileSignedUrl` points at: JSON lines, one per training step."""
    text = services_of(request).require_jobs().fireworks_metrics(job_id, tenant_of(request))
    return Response(text, media_type="application/jsonl")


@router.delete("/accounts/{account}/supervisedFineTuningJobs/{job_id}")
async def delete_fireworks_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_jobs().fireworks_delete(job_id, tenant_of(request)))


# -- Fireworks DPO jobs (routes with a ':verb' first: `{job_id}` alone would match them) ---------------------


@router.post("/accounts/{account}/dpoJobs/{job_id}:cancel")
async def cancel_dpo_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_dpo_jobs().dpo_cancel(job_id, tenant_of(request)))


@router.post("/accounts/{account}/dpoJobs/{job_id}:resume")
async def resume_dpo_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_dpo_jobs().dpo_resume(job_id, tenant_of(request)))


@router.get("/accounts/{account}/dpoJobs/{job_id}:getMetricsFileEndpoint")
async def dpo_job_metrics_endpoint(account: str, job_id: str, request: Request) -> Response:
    url = str(request.url_for("dpo_job_metrics", account=account, job_id=job_id))
    jobs = services_of(request).require_dpo_jobs()
    return JSONResponse(jobs.dpo_metrics_endpoint(job_id, url, tenant_of(request)))


@router.get("/accounts/{account}/dpoJobs/{job_id}/metrics")
async def dpo_job_metrics(account: str, job_id: str, request: Request) -> Response:
    """The file :getMetricsFileEndpoint points at: JSON lines, one per training step."""
    text = services_of(request).require_dpo_jobs().dpo_metrics(job_id, tenant_of(request))
    return Response(text, media_type="application/jsonl")


@router.post("/accounts/{account}/dpoJobs")
@json_body(DpoJobCreate)
async def create_dpo_job(
    account: str,
    request: Request,
    dpoJobId: str | None = None,  # noqa: N803 - Fireworks' name
) -> Response:
    body = await read_json_object(request)
    validate_body(DpoJobCreate, body)  # JSON types; the values are checked by the job service
    jobs = services_of(request).require_dpo_jobs()
    return JSONResponse(jobs.dpo_create(account, body, dpoJobId, tenant_of(request)))


@router.get("/accounts/{account}/dpoJobs")
async def list_dpo_jobs(
    account: str,
    request: Request,
    pageSize: int = 50,  # noqa: N803 - Fireworks' query parameter names
    pageToken: str | None = None,  # noqa: N803
) -> Response:
    return JSONResponse(
        services_of(request).require_dpo_jobs().dpo_list(pageSize, pageToken, tenant_of(request))
    )


@router.get("/accounts/{account}/dpoJobs/{job_id}")
async def get_dpo_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_dpo_jobs().dpo_get(job_id, tenant_of(request)))


@router.delete("/accounts/{account}/dpoJobs/{job_id}")
async def delete_dpo_job(account: str, job_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_dpo_jobs().dpo_delete(job_id, tenant_of(request)))
