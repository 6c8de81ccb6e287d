"""OpenAI files: POST/GET /files, GET/DELETE /files/{id}, GET /files/{id}/content (purpose fine-tune)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.services import services_of

router = APIRouter()


@router.post("/files")
async def create_file(request: Request) -> Response:
    return await services_of(request).require_files().create_file(request)


@router.get("/files")
async def list_files(
    request: Request, purpose: str | None = None, after: str | None = None, limit: int = 10_000
) -> Response:
    return JSONResponse(services_of(request).require_files().list_files(purpose, after, limit))


@router.get("/files/{file_id}")
async def get_file(file_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().get_file(file_id))


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    return services_of(request).require_files().file_content(file_id)


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).require_files().delete_file(file_id))
