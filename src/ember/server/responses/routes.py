"""OpenAI's Responses routes: POST /responses, GET / DELETE /responses/{id}, GET /responses/{id}/input_items,
POST /responses/{id}/cancel and POST /responses/input_tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.openapi import json_body
from ember.server.common.protocol import read_body
from ember.server.common.services import services_of
from ember.server.responses.protocol import ResponsesRequest

router = APIRouter()


@router.post("/responses")
@json_body(ResponsesRequest)
async def create_response(request: Request) -> Response:
    body = await read_body(request, ResponsesRequest)
    async with services_of(request).for_model(body.model) as served:
        return await served.require_responses().create(body, request)


@router.post("/responses/input_tokens")
@json_body(ResponsesRequest)
async def count_input_tokens(request: Request) -> Response:
    body = await read_body(request, ResponsesRequest)
    async with services_of(request).for_model(body.model) as served:
        return JSONResponse(await served.require_responses().count_input_tokens(body, request))


@router.get("/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request) -> Response:
    return JSONResponse(await services_of(request).require_responses().retrieve(response_id, request))


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> Response:
    return JSONResponse(await services_of(request).require_responses().delete(response_id, request))


@router.get("/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request) -> Response:
    return JSONResponse(await services_of(request).require_responses().input_items(response_id, request))


@router.post("/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request) -> Response:
    return JSONResponse(await services_of(request).require_responses().cancel(response_id, request))
