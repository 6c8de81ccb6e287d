"""Fireworks' control-plane routes for what ember serves: models (GET list/get; POST, :getUploadEndpoint,
:validateUpload (a GET, as Fireworks has it), PATCH and DELETE; :getDownloadEndpoint of an adapter's files for uploaded LoRA adapters) and deployed models (the SDK's `lora` resource:
POST load, GET list/get, PATCH, DELETE unload). Every route acts for the caller's key: the auth middleware keeps
`/accounts/{a}/` to its account (and lets every key read the server's own models)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.server.common.openapi import json_body
from ember.server.common.protocol import read_json_object, validate_body
from ember.server.common.services import services_of
from ember.server.common.tenancy import tenant_of
from ember.server.fireworks.control_plane import FireworksControlPlane
from ember.server.fireworks.protocol import (
    DeployedModelFields,
    ModelCreate,
    ModelUpdate,
    ModelUploadEndpoint,
)

router = APIRouter()
root_router = APIRouter()  # the signed upload URLs of model files, outside the API prefixes


def _plane(request: Request) -> FireworksControlPlane:
    plane = services_of(request).control_plane
    assert plane is not None  # build_app always sets it
    return plane


# -- models -----------------------------------------------------------------------------------------------------


@router.get("/accounts/{account}/models")
async def list_fireworks_models(
    account: str,
    request: Request,
    pageSize: int | None = None,  # noqa: N803 - Fireworks' query parameter names
    pageToken: str | None = None,  # noqa: N803
    orderBy: str | None = None,  # noqa: N803
    filter: str | None = None,  # noqa: A002
    readMask: str | None = None,  # noqa: N803
) -> Response:
    plane = _plane(request)
    return JSONResponse(plane.list_models(account, pageSize, pageToken, orderBy, filter, readMask))


@router.post("/accounts/{account}/models")
@json_body(ModelCreate)
async def create_fireworks_model(account: str, request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(ModelCreate, body)
    return JSONResponse(_plane(request).require_uploads().create(account, body))


@router.post("/accounts/{account}/models/{model_id}:getUploadEndpoint")
@json_body(ModelUploadEndpoint)
async def model_upload_endpoint(account: str, model_id: str, request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(ModelUploadEndpoint, body)
    uploads = _plane(request).require_uploads()
    return JSONResponse(uploads.upload_endpoint(account, model_id, body, str(request.base_url)))


@router.get("/accounts/{account}/models/{model_id}:validateUpload")
async def validate_model_upload(
    account: str,
    model_id: str,
    request: Request,
    configOnly: bool = False,  # noqa: N803 - Fireworks' query parameter names
    skipHfConfigValidation: bool = False,  # noqa: N803
    trustRemoteCode: bool = False,  # noqa: N803
) -> Response:
    flags = {
        "configOnly": configOnly,
        "skipHfConfigValidation": skipHfConfigValidation,
        "trustRemoteCode": trustRemoteCode,
    }
    return JSONResponse(await _plane(request).require_uploads().validate_upload(account, model_id, flags))


@router.get("/accounts/{account}/models/{model_id}:getDownloadEndpoint")
async def model_download_endpoint(
    account: str,
    model_id: str,
    request: Request,
    readMask: str | None = None,  # noqa: N803
) -> Response:
    plane = _plane(request)
    return JSONResponse(plane.download_endpoint(account, model_id, readMask, str(request.base_url)))


@root_router.get("/model-files/{account}/{model_id}/{filename}", include_in_schema=False)
async def get_signed_model_file(account: str, model_id: str, filename: str, request: Request) -> Response:
    return _plane(request).send_file(account, model_id, filename, request)


@router.get("/accounts/{account}/models/{model_id}")
async def get_fireworks_model(
    account: str,
    model_id: str,
    request: Request,
    readMask: str | None = None,  # noqa: N803
) -> Response:
    return JSONResponse(_plane(request).get_model(account, model_id, readMask))


@router.patch("/accounts/{account}/models/{model_id}")
@json_body(ModelUpdate)
async def update_fireworks_model(account: str, model_id: str, request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(ModelUpdate, body)
    return JSONResponse(_plane(request).update_model(account, model_id, body))


@router.delete("/accounts/{account}/models/{model_id}")
async def delete_fireworks_model(account: str, model_id: str, request: Request) -> Response:
    return JSONResponse(_plane(request).require_uploads().delete(account, model_id))


@root_router.put("/model-files/{account}/{model_id}/{filename}", include_in_schema=False)
async def put_signed_model_file(account: str, model_id: str, filename: str, request: Request) -> Response:
    return await _plane(request).require_uploads().receive_file(account, model_id, filename, request)


# -- deployed models (LoRA) -------------------------------------------------------------------------------------


@router.post("/accounts/{account}/deployedModels")
@json_body(DeployedModelFields)
async def load_lora(account: str, request: Request, replaceMergedAddon: bool = False) -> Response:  # noqa: N803
    body = await read_json_object(request)
    validate_body(DeployedModelFields, body)
    lora = _plane(request).lora
    return JSONResponse(await lora.load(account, body, replaceMergedAddon, tenant_of(request)))


@router.get("/accounts/{account}/deployedModels")
async def list_loras(
    account: str,
    request: Request,
    pageSize: int | None = None,  # noqa: N803
    pageToken: str | None = None,  # noqa: N803
    orderBy: str | None = None,  # noqa: N803
    filter: str | None = None,  # noqa: A002
    readMask: str | None = None,  # noqa: N803
) -> Response:
    lora = _plane(request).lora
    return JSONResponse(lora.list(account, pageSize, pageToken, orderBy, filter, readMask))


@router.get("/accounts/{account}/deployedModels/{deployed_model_id}")
async def get_lora(
    account: str,
    deployed_model_id: str,
    request: Request,
    readMask: str | None = None,  # noqa: N803
) -> Response:
    return JSONResponse(_plane(request).lora.get(account, deployed_model_id, readMask))


@router.patch("/accounts/{account}/deployedModels/{deployed_model_id}")
@json_body(DeployedModelFields)
async def update_lora(account: str, deployed_model_id: str, request: Request) -> Response:
    body = await read_json_object(request)
    validate_body(DeployedModelFields, body)
    return JSONResponse(_plane(request).lora.update(account, deployed_model_id, body, tenant_of(request)))


@router.delete("/accounts/{account}/deployedModels/{deployed_model_id}")
async def unload_lora(account: str, deployed_model_id: str, request: Request) -> Response:
    return JSONResponse(await _plane(request).lora.unload(account, deployed_model_id, tenant_of(request)))
