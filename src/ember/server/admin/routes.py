"""Routes for operating the server. GET /health and GET /metrics (unauthenticated: load balancers and Prometheus
scrape them; mounted at the root), and vLLM's GET/POST /ping and GET /version beside them. ember's adapter routes under the API prefixes: POST /adapters {"name", "path"}
serves a PEFT LoRA folder under the adapter roots (--adapter-dir, the caller's fine-tuning jobs) as a model (on
the default model, or on the served model `base_model` names), GET /adapters lists them, GET/DELETE /adapters/{name} shows /
unloads one (name: any name the adapter answers to)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ember.server.admin.protocol import AdapterLoad
from ember.server.common.errors import APIError
from ember.server.common.openapi import json_body
from ember.server.common.protocol import read_json_object, validate_body
from ember.server.common.services import services_of
from ember.server.common.tenancy import tenant_of

root_router = APIRouter()  # mounted without the API prefixes


@root_router.get("/health")
async def health(request: Request) -> Response:
    services = services_of(request)
    engine = services.state.engine
    stats = engine.stats()
    body: dict[str, object] = {"num_running": stats.num_running, "num_waiting": stats.num_waiting}
    if services.registry is not None:  # each model's state: loaded, loading, unloaded (with its last error)
        body["models"] = services.registry.health()
    if not engine.is_running:
        return JSONResponse({"status": "engine_unavailable", **body}, status_code=503)
    return JSONResponse({"status": "ok", **body})


@root_router.get("/metrics")
async def metrics(request: Request) -> Response:
    services = services_of(request)
    state = services.state
    text = (
        state.metrics.render(state.engine.stats())
        if services.registry is None
        else services.registry.render_metrics()  # every model under its own model_name label
    )
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@root_router.get("/ping")
async def ping(request: Request) -> Response:
    """vLLM's (and SageMaker's) liveness probe: 200 while the engine runs, 503 when it does not."""
    engine = services_of(request).state.engine
    return Response(status_code=200 if engine.is_running else 503)


@root_router.post("/ping")
async def ping_post(request: Request) -> Response:
    return await ping(request)


@root_router.get("/version")
async def server_version(request: Request) -> Response:
    return JSONResponse({"version": request.app.version})


router = APIRouter()


@router.post("/adapters")
@json_body(AdapterLoad)
async def load_adapter(request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(AdapterLoad, body)
    for field in ("name", "path"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise APIError(400, f"{field} is required and must be a non-empty string", param=field)
    check = body.get("check_base_model", True)
    if not isinstance(check, bool):
        raise APIError(400, "check_base_model must be a boolean", param="check_base_model")
    base_model = body.get("base_model")
    if base_model is not None and (not isinstance(base_model, str) or not base_model):
        raise APIError(400, "base_model must be the name of a served base model", param="base_model")
    services = services_of(request)
    if services.registry is not None:
        services.registry.check_adapter_name(body["name"], base_model)
    async with services.for_model(base_model) as served:
        if base_model is not None and base_model not in served.state.models.names:
            raise APIError(
                404,
                f"base_model {base_model!r} is not a base model of this server (see GET /v1/models)",
                param="base_model",
                code="model_not_found",
            )
        adapters = served.adapters
        await adapters.load_requested(body["name"], body["path"], tenant_of(request), check_base_model=check)
        return JSONResponse(adapters.get(body["name"]))


@router.get("/adapters")
async def list_adapters(request: Request) -> Response:
    services = services_of(request)
    listing = services.adapters.listing()
    if services.registry is not None:  # the adapters of every loaded model
        for served in services.registry.loaded_services():
            listing["data"] += served.adapters.listing()["data"]
    return JSONResponse(listing)


@router.get("/adapters/{name:path}")
async def get_adapter(name: str, request: Request) -> Response:
    async with services_of(request).for_model(name) as served:
        return JSONResponse(served.adapters.get(name))


@router.delete("/adapters/{name:path}")
async def unload_adapter(name: str, request: Request) -> Response:
    async with services_of(request).for_model(name) as served:
        adapter = await served.adapters.unload(name, tenant_of(request))
    return JSONResponse({"id": adapter.model_id, "object": "adapter", "deleted": True})
