"""Fireworks' control plane as one object on the app: the models of an account (served ones and uploaded ones
not loaded yet), their uploads, and the LoRA routes; the routes in routes.py call it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import FileResponse, Response

from ember.lora.adapter import WEIGHTS_FILE
from ember.lora.peft_config import CONFIG_FILE
from ember.server.common.errors import APIError
from ember.server.common.read_mask import apply_read_mask
from ember.server.fine_tuning.signed_urls import UrlSigner
from ember.server.fireworks.model_objects import MODEL_FIELDS
from ember.server.fireworks.model_uploads import SIGNED_MODEL_PREFIX, ModelUploads
from ember.server.fireworks.serving_lora import FireworksLora
from ember.server.fireworks.serving_models import FireworksModels, paginate, sort_resources

ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what a PEFT folder's download holds
_UPDATABLE = frozenset({"displayName", "description"})
_OUTPUT_ONLY = frozenset({"name", "state", "status", "createTime", "updateTime", "deployedModelRefs"})

if TYPE_CHECKING:
    from ember.server.admin.serving_adapters import AdapterServing
    from ember.server.common.services import ServingState
    from ember.server.fine_tuning.serving_jobs import FineTuningRuntime


class FireworksControlPlane:
    def __init__(
        self, state: ServingState, adapters: AdapterServing, runtime: FineTuningRuntime | None
    ) -> None:
        self.models = FireworksModels(state, adapters, runtime)
        self.signer = UrlSigner()
        self.uploads = (
            None
            if runtime is None
            else ModelUploads(
                runtime.data_dir, state.engine, state.models, runtime.config.max_upload_bytes, self.signer
            )
        )
        self.lora = FireworksLora(self.models, self.uploads)

    def require_uploads(self) -> ModelUploads:
        if self.uploads is None:
            raise APIError(
                404,
                "model uploads need a data directory; this server was started without one (ember serve --data-dir)",
                code="fine_tuning_disabled",
            )
        return self.uploads

    def list_models(
        self,
        account: str,
        page_size: int | None,
        page_token: str | None,
        order_by: str | None,
        filter_text: str | None,
        read_mask: str | None,
    ) -> dict[str, Any]:
        if filter_text:
            raise APIError(400, "filter is not supported on this server; list without it", param="filter")
        served = self.models.account_models(account)
        models = [self.models.model_object(m) for m in served]
        names = {m["name"] for m in models}
        if self.uploads is not None:
            models += [
                self.uploads.model_object(u) for u in self.uploads.of_account(account) if u.name not in names
            ]
        page = paginate(sort_resources(models, order_by), page_size, page_token)
        return {
            "models": [apply_read_mask(m, read_mask, MODEL_FIELDS) for m in page.items],
            "nextPageToken": page.next_token,
            "totalSize": len(models),
        }

    def get_model(self, account: str, model_id: str, read_mask: str | None) -> dict[str, Any]:
        try:
            return self.models.get(account, model_id, read_mask)
        except APIError:
            uploaded = None if self.uploads is None else self.uploads.get(account, model_id)
            if uploaded is None:
                raise
        return apply_read_mask(self.require_uploads().model_object(uploaded), read_mask, MODEL_FIELDS)

    def update_model(self, account: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: the display name and description of an adapter model (served or uploaded); a field ember
        derives from the model itself is refused by name (output-only fields sent back are ignored)."""
        for field in body:
            if field not in _UPDATABLE and field not in _OUTPUT_ONLY:
                raise APIError(400, f"{field} cannot be changed on this server", param=field)
        try:
            served = self.models.find(account, model_id)
        except APIError:
            served = None
        if served is not None and served.adapter is None:
            raise APIError(400, "the base model is configured when the server starts", param="model")
        uploaded = None if self.uploads is None else self.uploads.update(account, model_id, body)
        if served is not None and served.adapter is not None:
            self.models.set_labels(served.adapter.lora_id, body.get("displayName"), body.get("description"))
            return self.models.get(account, model_id, None)
        if uploaded is None:
            raise APIError(
                404,
                f"model 'accounts/{account}/models/{model_id}' not found",
                param="model",
                code="not_found",
            )
        return uploaded

    # -- downloads -------------------------------------------------------------------------------------------

    def download_endpoint(
        self, account: str, model_id: str, read_mask: str | None, base_url: str
    ) -> dict[str, Any]:
        """Signed GET URLs of an adapter model's PEFT files (a served adapter, or an uploaded one once READY).
        The base model's weights are the operator's files and are not handed out."""
        folder = self._adapter_folder(account, model_id, check_visible=True)
        urls = {
            name: self.signer.sign(base_url, "GET", f"{SIGNED_MODEL_PREFIX}/{account}/{model_id}/{name}")
            for name in ADAPTER_FILES
            if (folder / name).is_file()
        }
        return apply_read_mask({"filenameToSignedUrls": urls}, read_mask, frozenset({"filenameToSignedUrls"}))

    def send_file(self, account: str, model_id: str, filename: str, http: Request) -> Response:
        params = http.query_params
        self.signer.verify(http.method, http.url.path, params.get("expires"), params.get("signature"))
        folder = self._adapter_folder(account, model_id, check_visible=False)
        if filename not in ADAPTER_FILES or not (folder / filename).is_file():
            raise APIError(404, f"model {model_id!r} has no file {filename!r}", code="not_found")
        return FileResponse(folder / filename, filename=filename)

    def _adapter_folder(self, account: str, model_id: str, *, check_visible: bool) -> Path:
        full = f"accounts/{account}/models/{model_id}"
        if check_visible:
            try:
                served = self.models.find(account, model_id)  # what the key does not see is not found
            except APIError:
                served = None  # maybe an uploaded model not loaded yet (the account's, as the path is)
            if served is not None and served.adapter is None:
                raise APIError(
                    400,
                    "the base model's weights are not downloadable from this server; adapters are",
                    param="model",
                )
            adapter = None if served is None else served.adapter
        else:  # a signed URL: the key was checked when it was signed
            adapter = self.models.state.models.adapter(full, any_owner=True)
        if adapter is not None and adapter.path is not None:
            return Path(adapter.path)
        ready = None if self.uploads is None else self.uploads.ready_model(account, model_id)
        if ready is None:
            raise APIError(404, f"model {full!r} has no files to download", param="model", code="not_found")
        return ready.folder
