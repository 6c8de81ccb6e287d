"""Fireworks datasets: POST /accounts/{a}/datasets, POST .../datasets/{id}:upload, GET list/get, DELETE."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.services import services_of
from ember.server.fine_tuning.file_objects import read_json_object

router = APIRouter()


@router.post("/accounts/{account}/datasets")
async def create_dataset(account: str, request: Request) -> Response:
    body = await read_json_object(request)
    return JSONResponse(services_of(request).require_files().create_dataset(account, body))


@router.post("/accounts/{account}/datasets/{dataset_id}:upload")
async def upload_dataset(account: str, dataset_id: str, request: Request) -> Response:
    return await services_of(request).require_files().upload_dataset(account, dataset_id, request)


@router.get("/accounts/{account}/datasets")
async def list_datasets(account: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().list_datasets(account))


@router.get("/accounts/{account}/datasets/{dataset_id}")
async def get_dataset(account: str, dataset_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().get_dataset(account, dataset_id))


@router.delete("/accounts/{account}/datasets/{dataset_id}")
async def delete_dataset(account: str, dataset_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().delete_dataset(account, dataset_id))
