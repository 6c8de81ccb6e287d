"""POST /completions and /chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.server.common.request_body import read_body
from ember.server.common.services import services_of
from ember.server.openai.protocol import ChatCompletionRequest
from ember.server.openai.protocol_completions import CompletionRequest

router = APIRouter()


@router.post("/completions")
async def create_completion(request: Request) -> Response:
    body = await read_body(request, CompletionRequest)
    return await services_of(request).completions.create(body, request)


@router.post("/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    body = await read_body(request, ChatCompletionRequest)
    return await services_of(request).chat.create(body, request)
