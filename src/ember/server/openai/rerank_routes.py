"""POST /rerank (Fireworks / Cohere) and /score (vLLM): relevance of documents to a query."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.openapi import json_body
from ember.server.common.protocol import read_body
from ember.server.common.services import services_of
from ember.server.openai.rerank_protocol import RerankRequest, ScoreRequest

router = APIRouter()


@router.post("/rerank")
@json_body(RerankRequest)
async def rerank(request: Request) -> Response:
    body = await read_body(request, RerankRequest)
    async with services_of(request).for_model(body.model) as served:
        return JSONResponse(await served.rerank.rerank(body, request))


@router.post("/score")
@json_body(ScoreRequest)
async def score(request: Request) -> Response:
    body = await read_body(request, ScoreRequest)
    async with services_of(request).for_model(body.model) as served:
        return JSONResponse(await served.rerank.score(body, request))
