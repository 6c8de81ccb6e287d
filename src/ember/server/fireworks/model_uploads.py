"""Models registered with Fireworks' upload flow: POST /accounts/{a}/models creates a LoRA adapter model
(kind HF_PEFT_ADDON) in state UPLOADING, `:getUploadEndpoint` signs one PUT URL per file of its PEFT folder
(adapter_config.json, adapter_model.safetensors ...), `:validateUpload` checks that the folder is an adapter that
fits the served base model and makes it READY; `lora.load` then serves it. Nothing is fetched from a network.

ember serves the one base model it was started with, so a new base model (HF_BASE_MODEL) is refused by name.
On disk, beside the fine-tuning data (no tuning.db change):
    models/<account>/<model id>.json      the model's fields and state
    model-files/<account>/<model id>/     its files as uploaded (and the upload's manifest)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response

from ember.lora.adapter import load_peft_adapter
from ember.lora.errors import LoraError
from ember.server.common.errors import APIError
from ember.server.common.read_mask import apply_read_mask
from ember.server.fine_tuning.file_objects import rfc3339, tuning_api_error
from ember.server.fine_tuning.signed_urls import UrlSigner
from ember.tuning.dataset_shards import ShardError, ShardStaging, parse_shard_plan
from ember.tuning.file_storage import ConflictError, NotFoundError
from ember.tuning.multipart_upload import UploadTooLargeError

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.server.common.served_models import ServedModels

SIGNED_MODEL_PREFIX = "/model-files"
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Fields of Fireworks' Model a client may set on an upload; output-only ones sent back are ignored.
_SETTABLE = frozenset({"displayName", "description", "kind", "peftDetails", "public"})
_OUTPUT_ONLY = frozenset({"name", "state", "status", "createTime", "updateTime", "deployedModelRefs"})


@dataclass(frozen=True)
class UploadedModel:
    account: str
    model_id: str
    display_name: str
    description: str | None
    state: str  # UPLOADING | READY
    base_model: str
    rank: int
    target_modules: tuple[str, ...]
    create_time: float
    update_time: float

    @property
    def name(self) -> str:
        return f"accounts/{self.account}/models/{self.model_id}"


@dataclass(frozen=True)
class ReadyModel:
    model_id: str
    folder: Path


class ModelUploads:
    def __init__(
        self,
        data_dir: Path,
        engine: AsyncEngine,
        models: ServedModels,
        max_upload_bytes: int,
        signer: UrlSigner | None = None,
    ) -> None:
        self.meta_root = Path(data_dir) / "models"
        self.files = ShardStaging(Path(data_dir) / "model-files", Path(data_dir) / "incoming")
        self.engine = engine
        self.models = models
        self.max_upload_bytes = max_upload_bytes
        self.signer = signer or UrlSigner()

    # -- records ---------------------------------------------------------------------------------------------

    def get(self, account: str, model_id: str) -> UploadedModel | None:
        if not (_MODEL_ID.fullmatch(account) and _MODEL_ID.fullmatch(model_id)):
            return None  # never a path outside the models folder (an account of '..')
        try:
            data = json.loads((self.meta_root / account / f"{model_id}.json").read_text())
        except (OSError, ValueError):
            return None
        return UploadedModel(**{**data, "target_modules": tuple(data["target_modules"])})

    def of_account(self, account: str) -> list[UploadedModel]:
        if not _MODEL_ID.fullmatch(account):
            return []
        folder = self.meta_root / account
        found = (
            [self.get(account, path.stem) for path in sorted(folder.glob("*.json"))]
            if folder.is_dir()
            else []
        )
        return [model for model in found if model is not None]

    def ready_model(self, account: str, model_id: str) -> ReadyModel | None:
        model = self.get(account, model_id)
        if model is None or model.state != "READY":
            return None
        return ReadyModel(model_id, self.files.folder(account, model_id))

    def _save(self, model: UploadedModel) -> None:
        folder = self.meta_root / model.account
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{model.model_id}.json.tmp"
        temporary.write_text(json.dumps({**asdict(model), "target_modules": list(model.target_modules)}))
        os.replace(temporary, folder / f"{model.model_id}.json")

    # -- the routes ------------------------------------------------------------------------------------------

    def create(self, account: str, body: dict[str, Any]) -> dict[str, Any]:
        model_id = body.get("modelId")
        if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id):
            raise APIError(
                400,
                "modelId is required: 1-63 lowercase letters, digits or '-', starting alnum",
                param="modelId",
            )
        if not _MODEL_ID.fullmatch(account):
            raise APIError(
                400, f"account id {account!r} must be 1-63 lowercase letters, digits or '-'", param="account"
            )
        if body.get("cluster"):
            raise APIError(400, "cluster: this server has no BYOC clusters", param="cluster")
        fields = body.get("model") or {}
        for field in fields:
            if field not in _SETTABLE and field not in _OUTPUT_ONLY:
                raise APIError(
                    400,
                    f"model.{field} cannot be set on this server's uploaded models",
                    param=f"model.{field}",
                )
        kind = fields.get("kind", "HF_PEFT_ADDON")
        if kind != "HF_PEFT_ADDON":
            raise APIError(
                400,
                f"model.kind {kind!r}: this server serves the base model it was started with; it takes LoRA "
                "adapters (HF_PEFT_ADDON) for it",
                param="model.kind",
            )
        if fields.get("public"):
            raise APIError(
                400,
                "model.public: an uploaded model is its account's; load it with public",
                param="model.public",
            )
        peft = fields.get("peftDetails") or {}
        base_model = peft.get("baseModel") or self.models.model_id
        if base_model not in self.models.names:
            raise APIError(
                400,
                f"model.peftDetails.baseModel {base_model!r} is not served here; this server serves "
                f"{self.models.model_id!r}",
                param="model.peftDetails.baseModel",
            )
        full = f"accounts/{account}/models/{model_id}"
        if self.get(account, model_id) is not None or self.models.adapter(full, any_owner=True) is not None:
            raise APIError(409, f"model {full!r} already exists", param="modelId", code="already_exists")
        now = time.time()
        model = UploadedModel(
            account,
            model_id,
            fields.get("displayName") or model_id,
            fields.get("description"),
            "UPLOADING",
            self.models.model_id,
            int(peft.get("r") or 0),
            tuple(peft.get("targetModules") or ()),
            now,
            now,
        )
        self._save(model)
        return self.model_object(model)

    def upload_endpoint(
        self, account: str, model_id: str, body: dict[str, Any], base_url: str
    ) -> dict[str, Any]:
        model = self._uploading(account, model_id)
        if body.get("enableResumableUpload"):
            raise APIError(
                400,
                "enableResumableUpload: each file is one PUT to its signed URL here",
                param="enableResumableUpload",
            )
        try:
            plan = parse_shard_plan(body.get("filenameToSize"), self.max_upload_bytes)
        except ShardError as error:
            raise APIError(400, str(error), param=error.param) from error
        self.files.register(account, model.model_id, plan)
        urls = {
            name: self.signer.sign(base_url, "PUT", f"{SIGNED_MODEL_PREFIX}/{account}/{model_id}/{name}")
            for name in plan.sizes
        }
        return apply_read_mask(
            {"filenameToSignedUrls": urls},
            body.get("readMask"),
            frozenset({"filenameToSignedUrls", "filenameToUnsignedUris"}),
        )

    async def receive_file(self, account: str, model_id: str, filename: str, http: Request) -> Response:
        params = http.query_params
        self.signer.verify(http.method, http.url.path, params.get("expires"), params.get("signature"))
        self._uploading(account, model_id)
        try:
            await self.files.receive(account, model_id, filename, http.stream())
        except ShardError as error:
            raise APIError(400, str(error), param=error.param) from error
        except (NotFoundError, ConflictError, UploadTooLargeError) as error:
            raise tuning_api_error(error) from error
        return Response(status_code=200)

    async def validate_upload(self, account: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Check the uploaded folder is a PEFT LoRA adapter that fits the served base model; READY if so.
        The whole adapter is always checked (`configOnly` and `skipHfConfigValidation` would leave a model that
        fails at load time), and ember never runs a model's code (`trustRemoteCode`)."""
        for flag in ("configOnly", "skipHfConfigValidation", "trustRemoteCode"):
            if body.get(flag):
                raise APIError(
                    400,
                    f"{flag}: this server always checks a whole adapter and runs no model code",
                    param=flag,
                )
        model = self._uploading(account, model_id)
        missing = self.files.missing(account, model_id)
        if missing is None:
            raise APIError(
                409, f"nothing was uploaded for {model.name!r}; call getUploadEndpoint", code="conflict"
            )
        if missing:
            raise APIError(
                409, f"these registered files were not uploaded yet: {', '.join(missing)}", code="conflict"
            )
        folder = self.files.folder(account, model_id)
        try:
            adapter = await asyncio.to_thread(
                load_peft_adapter, str(folder), self.engine.model_config, model_id
            )
        except LoraError as error:
            message = str(error).replace(str(folder), model.name)
            raise APIError(
                400,
                f"the upload is not a LoRA adapter for the served model: {message}",
                code="invalid_adapter",
            ) from error
        ready = replace(
            model,
            state="READY",
            rank=adapter.rank,
            target_modules=tuple(adapter.target_modules),
            update_time=time.time(),
        )
        self._save(ready)
        return {"warnings": []}

    def update(self, account: str, model_id: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """PATCH of an uploaded model's display name and description; None when it is not an uploaded model."""
        model = self.get(account, model_id)
        if model is None:
            return None
        updated = replace(
            model,
            display_name=body.get("displayName") or model.display_name,
            description=body.get("description", model.description),
            update_time=time.time(),
        )
        self._save(updated)
        return self.model_object(updated)

    def delete(self, account: str, model_id: str) -> dict[str, Any]:
        model = self.get(account, model_id)
        full = f"accounts/{account}/models/{model_id}"
        if model is None:
            if self.models.adapter(full) is not None or full in self.models.names:
                raise APIError(
                    400,
                    f"{full!r} was not uploaded: unload it with the lora routes (a fine-tuned model goes with its job)",
                    param="model",
                )
            raise APIError(404, f"model {full!r} not found", param="model", code="not_found")
        if self.models.adapter(full, any_owner=True) is not None:
            raise APIError(409, f"{full!r} is deployed; unload it first", param="model", code="conflict")
        (self.meta_root / account / f"{model_id}.json").unlink(missing_ok=True)
        shutil.rmtree(self.files.folder(account, model_id), ignore_errors=True)
        return {}

    def model_object(self, model: UploadedModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "displayName": model.display_name,
            **({"description": model.description} if model.description is not None else {}),
            "createTime": rfc3339(model.create_time),
            "updateTime": rfc3339(model.update_time),
            "state": model.state,
            "status": {"code": "OK", "message": ""},
            "kind": "HF_PEFT_ADDON",
            "contextLength": self.engine.max_model_len,
            "peftDetails": {
                "baseModel": model.base_model,
                "r": model.rank,
                "targetModules": list(model.target_modules),
            },
            "tunable": False,
            "supportsLora": False,
            "supportsServerless": False,
            "public": False,
        }

    def _uploading(self, account: str, model_id: str) -> UploadedModel:
        model = self.get(account, model_id)
        if model is None:
            raise APIError(
                404,
                f"model 'accounts/{account}/models/{model_id}' not found",
                param="model",
                code="not_found",
            )
        if model.state != "UPLOADING":
            raise APIError(409, f"model {model.name!r} is {model.state}; its upload is done", code="conflict")
        return model
