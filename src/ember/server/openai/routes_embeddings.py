"""POST /embeddings, /tokenize and /detokenize."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.request_body import read_body
from ember.server.common.services import services_of
from ember.server.openai.protocol_embeddings import EmbeddingRequest
from ember.server.openai.protocol_tokenize import DetokenizeRequest, TokenizeRequest

router = APIRouter()


@router.post("/embeddings")
async def create_embeddings(request: Request) -> Response:
    body = await read_body(request, EmbeddingRequest)
    return JSONResponse(await services_of(request).embeddings.create(body))


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    body = await read_body(request, TokenizeRequest)
    return JSONResponse(services_of(request).tokenize.tokenize(body))


@router.post("/detokenize")
async def detokenize(request: Request) -> Response:
    body = await read_body(request, DetokenizeRequest)
    return JSONResponse(services_of(request).tokenize.detokenize(body))
