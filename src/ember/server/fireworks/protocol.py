"""The bodies of Fireworks' model and deployed-model (LoRA) routes as pydantic models: JSON types checked at
every level (a wrong type is a 400 naming the field), and what /openapi.json shows. What ember cannot honour
is refused by name where it is used (model_uploads.py, serving_lora.py)."""

from __future__ import annotations

from pydantic import Field

from ember.server.common.protocol import APIModel


class PeftDetails(APIModel):
    baseModel: str | None = None  # noqa: N815 - Fireworks' field names
    r: int | None = Field(default=None, ge=0, le=4096)
    targetModules: list[str] | None = None  # noqa: N815


class ModelFields(APIModel):
    displayName: str | None = Field(default=None, max_length=255)  # noqa: N815
    description: str | None = Field(default=None, max_length=1000)
    kind: str | None = Field(default=None, description="only HF_PEFT_ADDON (a LoRA adapter) can be uploaded")
    peftDetails: PeftDetails | None = None  # noqa: N815
    public: bool | None = None


class ModelCreate(APIModel):
    """POST /v1/accounts/{account}/models: a LoRA adapter model, UPLOADING until its files are validated."""

    modelId: str  # noqa: N815
    model: ModelFields | None = None
    cluster: str | None = None


class ModelUpdate(APIModel):
    """PATCH /v1/accounts/{account}/models/{model_id}: the display name and description."""

    displayName: str | None = Field(default=None, max_length=255)  # noqa: N815
    description: str | None = Field(default=None, max_length=1000)


class ModelUploadEndpoint(APIModel):
    """POST .../models/{model_id}:getUploadEndpoint: the adapter folder's files (name -> size in bytes)."""

    filenameToSize: dict[str, str | int]  # noqa: N815
    enableResumableUpload: bool | None = None  # noqa: N815
    readMask: str | None = None  # noqa: N815


class DeployedModelFields(APIModel):
    """POST /v1/accounts/{account}/deployedModels (load a LoRA) and PATCH .../deployedModels/{id}."""

    model: str | None = None
    deployment: str | None = None
    displayName: str | None = Field(default=None, max_length=255)  # noqa: N815
    description: str | None = Field(default=None, max_length=1000)
    default: bool | None = None
    public: bool | None = None
    serverless: bool | None = None
