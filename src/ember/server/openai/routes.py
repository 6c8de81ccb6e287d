"""The OpenAI routes: POST /completions, /chat/completions, /embeddings, /tokenize and /detokenize, and GET
/models and /models/{id} (ids contain slashes: accounts/<account>/models/<name>). vLLM also serves /tokenize and
/detokenize at the root: `root_router` (behind the API key like /v1)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.body_release import release_off_loop
from ember.server.common.openapi import json_body
from ember.server.common.protocol import read_body
from ember.server.common.services import services_of
from ember.server.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)

router = APIRouter()


@router.post("/completions")
@json_body(CompletionRequest)
async def create_completion(request: Request) -> Response:
    body = await read_body(request, CompletionRequest)
    try:
        async with services_of(request).for_model(body.model) as served:
            return await served.completions.create(body, request)
    finally:
        release_off_loop(body)


@router.post("/chat/completions")
@json_body(ChatCompletionRequest)
async def create_chat_completion(request: Request) -> Response:
    body = await read_body(request, ChatCompletionRequest)
    try:
        async with services_of(request).for_model(body.model) as served:
            return await served.chat.create(body, request)
    finally:
        release_off_loop(body)


@router.post("/embeddings")
@json_body(EmbeddingRequest)
async def create_embeddings(request: Request) -> Response:
    body = await read_body(request, EmbeddingRequest)
    try:
        async with services_of(request).for_model(body.model) as served:
            return JSONResponse(await served.embeddings.create(body, request))
    finally:
        release_off_loop(body)


@router.post("/tokenize")
@json_body(TokenizeRequest)
async def tokenize(request: Request) -> Response:
    body = await read_body(request, TokenizeRequest)
    async with services_of(request).for_model(body.model) as served:
        return await served.tokenize.tokenize(body)


@router.post("/detokenize")
@json_body(DetokenizeRequest)
async def detokenize(request: Request) -> Response:
    body = await read_body(request, DetokenizeRequest)
    async with services_of(request).for_model(body.model) as served:
        return await served.tokenize.detokenize(body)


@router.get("/models")
async def list_models(request: Request) -> Response:
    services = services_of(request)
    listing = services.state.models.listing()
    if services.registry is not None:  # the other base models, loaded or not, and their adapters
        listing["data"] += services.registry.model_cards()
    return JSONResponse(listing)


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    services = services_of(request)
    card = None if services.registry is None else services.registry.card_of(model_id)
    return JSONResponse(card if card is not None else services.state.models.card_of(model_id))


root_router = APIRouter()  # vLLM's root aliases
root_router.add_api_route("/tokenize", tokenize, methods=["POST"], include_in_schema=False)
root_router.add_api_route("/detokenize", detokenize, methods=["POST"], include_in_schema=False)
