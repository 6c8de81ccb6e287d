"""GET /health and GET /metrics (unauthenticated: load balancers and Prometheus scrape them)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ember.server.common.services import services_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    engine = services_of(request).state.engine
    stats = engine.stats()
    body = {"num_running": stats.num_running, "num_waiting": stats.num_waiting}
    if not engine.is_running:
        return JSONResponse({"status": "engine_unavailable", **body}, status_code=503)
    return JSONResponse({"status": "ok", **body})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = services_of(request).state
    return PlainTextResponse(
        state.metrics.render(state.engine.stats()), media_type="text/plain; version=0.0.4"
    )
