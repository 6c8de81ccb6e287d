"""GET /openapi.json and /docs. The routes read their bodies themselves (parsed off the event loop, errors in
OpenAI's envelope), so FastAPI cannot see the body models: each route names its model with @json_body or
@multipart_body, and the schema is completed from those. /docs is FastAPI's Swagger UI page with its script
and stylesheet served from this server (the fastapi-offline package ships them), never from a CDN."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ember.server.common.errors import is_anthropic_path

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
DOCS_ASSETS_URL = "/docs/assets"
_BODY_ATTRIBUTE = "ember_request_body"
EndpointT = TypeVar("EndpointT", bound=Callable[..., Any])


@dataclass(frozen=True)
class RequestBody:
    model: type[BaseModel]
    media_type: str


def json_body(model: type[BaseModel]) -> Callable[[EndpointT], EndpointT]:
    """Declares the JSON body an endpoint reads (with read_body / read_json_object) for /openapi.json."""
    return _declare(RequestBody(model, "application/json"))


def multipart_body(model: type[BaseModel]) -> Callable[[EndpointT], EndpointT]:
    """Declares the multipart/form-data form an upload endpoint streams to disk, for /openapi.json."""
    return _declare(RequestBody(model, "multipart/form-data"))


def _declare(body: RequestBody) -> Callable[[EndpointT], EndpointT]:
    def mark(endpoint: EndpointT) -> EndpointT:
        setattr(endpoint, _BODY_ATTRIBUTE, body)
        return endpoint

    return mark


_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}


def build_openapi(app: FastAPI, description: str) -> dict[str, Any]:
    """The app's OpenAPI document, with every declared request body and the error envelope of each route."""
    document = get_openapi(title=app.title, version=app.version, description=description, routes=app.routes)
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body: ember answers 400
        schemas.pop(name, None)
    schemas["Error"] = _OPENAI_ERROR
    schemas["AnthropicError"] = _ANTHROPIC_ERROR
    for route in iter_route_contexts(app.routes):  # routes of included routers too, as get_openapi sees them
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        body: RequestBody | None = getattr(route.endpoint, _BODY_ATTRIBUTE, None)
        error_schema = "AnthropicError" if is_anthropic_path(route.path_format) else "Error"
        for method in route.methods or ():
            operation = document["paths"][route.path_format][method.lower()]
            if body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {body.media_type: {"schema": _component(schemas, body.model)}},
                }
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = {
                "description": "A client mistake, in the error envelope",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{error_schema}"}}},
            }
    return document


def _component(schemas: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    """Adds `model` (and the models it uses) to the components; returns a reference to it."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in {**schema.pop("$defs", {}), model.__name__: schema}.items():
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two request models are named {name}; OpenAPI components need unique names")
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI, description: str) -> None:
    """Serves GET /openapi.json and the Swagger UI page at GET /docs, assets included."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, description)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=_assets_dir()), name="docs-assets")

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi_json() -> Response:
        return JSONResponse(openapi())

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )
