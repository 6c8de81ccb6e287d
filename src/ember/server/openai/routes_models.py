"""GET /models and /models/{id} (ids contain slashes: accounts/<account>/models/<name>)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.services import services_of

router = APIRouter()


@router.get("/models")
async def list_models(request: Request) -> Response:
    return JSONResponse(services_of(request).state.models.listing())


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    return JSONResponse(services_of(request).state.models.card_of(model_id))
