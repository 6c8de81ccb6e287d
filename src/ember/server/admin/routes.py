"""ember's adapter admin routes: POST /adapters {"name", "path"} serves an existing PEFT LoRA folder as a model,
GET /adapters lists them, GET/DELETE /adapters/{name} shows / unloads one (name: any name the adapter answers to).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.errors import APIError
from ember.server.common.services import services_of
from ember.server.fine_tuning.file_objects import read_json_object

router = APIRouter()


@router.post("/adapters")
async def load_adapter(request: Request) -> Response:
    body = await read_json_object(request)
    for field in ("name", "path"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise APIError(400, f"{field} is required and must be a non-empty string", param=field)
    check = body.get("check_base_model", True)
    if not isinstance(check, bool):
        raise APIError(400, "check_base_model must be a boolean", param="check_base_model")
    adapters = services_of(request).adapters
    await adapters.load(body["name"], body["path"], check_base_model=check)
    return JSONResponse(adapters.get(body["name"]))


@router.get("/adapters")
async def list_adapters(request: Request) -> Response:
    return JSONResponse(services_of(request).adapters.listing())


@router.get("/adapters/{name:path}")
async def get_adapter(name: str, request: Request) -> Response:
    return JSONResponse(services_of(request).adapters.get(name))


@router.delete("/adapters/{name:path}")
async def unload_adapter(name: str, request: Request) -> Response:
    adapter = await services_of(request).adapters.unload(name)
    return JSONResponse({"id": adapter.model_id, "object": "adapter", "deleted": True})
