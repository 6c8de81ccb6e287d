"""Anthropic's POST /messages and /messages/count_tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.anthropic.protocol import CountTokensRequest, MessagesRequest
from ember.server.common.body_release import release_off_loop
from ember.server.common.openapi import json_body
from ember.server.common.protocol import read_body
from ember.server.common.services import services_of

router = APIRouter()


@router.post("/messages")
@json_body(MessagesRequest)
async def create_message(request: Request) -> Response:
    body = await read_body(request, MessagesRequest)
    try:
        async with services_of(request).for_model(body.model) as served:
            return await served.messages.create(body, request)
    finally:
        release_off_loop(body)


@router.post("/messages/count_tokens")
@json_body(CountTokensRequest)
async def count_message_tokens(request: Request) -> Response:
    body = await read_body(request, CountTokensRequest)
    async with services_of(request).for_model(body.model) as served:
        return JSONResponse(await served.messages.count_tokens(body))
