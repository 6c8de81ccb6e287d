"""Fireworks' LoRA routes (the fireworks-ai SDK's `lora` resource, /accounts/{a}/deployedModels) over ember's
adapter serving: load, list, get, update and unload LoRA adapters on ember's one deployment, the server itself.

A deployed model is named after its model (`accounts/a/deployedModels/<id>` for `accounts/a/models/<id>`): ember
serves each adapter once. What `lora.load` can load is an adapter this server has on disk for the account: a
fine-tuning job's output model (served when the job succeeded; after an unload it can be loaded again) or a
model registered with POST /accounts/{a}/models and its upload. Fields ember cannot honour are refused by name:
`serverless` (a LoRA needs a deployment), `replaceMergedAddon` (ember never merges adapters into the base
weights), `default: false` (the one deployment is every model's default), `public` without an admin key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ember.server.common.errors import APIError
from ember.server.common.read_mask import apply_read_mask
from ember.server.common.tenancy import Tenant
from ember.server.fine_tuning.serving_jobs import job_adapter_names
from ember.server.fireworks.model_objects import DEPLOYED_MODEL_FIELDS
from ember.server.fireworks.serving_models import AccountModel, FireworksModels, paginate, sort_resources
from ember.tuning.ownership import sees

if TYPE_CHECKING:
    from ember.server.fireworks.model_uploads import ModelUploads
    from ember.tuning.job_store import JobRecord

AdapterLoader = Callable[[], Awaitable[None]]


class FireworksLora:
    def __init__(self, models: FireworksModels, uploads: ModelUploads | None = None) -> None:
        self.models = models
        self.uploads = uploads

    async def load(
        self, account: str, body: dict[str, Any], replace_merged_addon: bool, tenant: Tenant
    ) -> dict[str, Any]:
        if replace_merged_addon:
            raise APIError(
                400,
                "replaceMergedAddon: ember serves adapters beside the base weights, never merged",
                param="replaceMergedAddon",
            )
        self._check_fields(body, tenant)
        model_name = body.get("model")
        if not isinstance(model_name, str) or not model_name:
            raise APIError(400, "model is required: the accounts/<a>/models/<id> to load", param="model")
        full = model_name if model_name.startswith("accounts/") else f"accounts/{account}/models/{model_name}"
        if not full.startswith(f"accounts/{account}/models/") or full.count("/") != 3:
            raise APIError(
                400,
                f"model must be a model of account {account!r} (accounts/{account}/models/<id>), got {model_name!r}",
                param="model",
            )
        try:
            self.models.find(account, full)
        except APIError:
            pass
        else:
            raise APIError(
                409, f"{full!r} is already deployed on this server", param="model", code="already_exists"
            )
        loader = self._loader(account, full, bool(body.get("public")), tenant)
        await loader()
        model = self.models.find(account, full)
        assert model.adapter is not None
        lora_id = model.adapter.lora_id
        self.models.labels.pop(lora_id, None)  # of an earlier adapter of that name (unloaded by /v1/adapters)
        record = None if self.uploads is None else self.uploads.get(account, full.rsplit("/", 1)[-1])
        if record is not None:  # an uploaded model's own labels, unless the load sets others
            self.models.set_labels(lora_id, record.display_name, record.description)
        self.models.set_labels(lora_id, body.get("displayName"), body.get("description"))
        return self.models.deployed_object(account, model)

    def list(
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
        deployed = [
            self.models.deployed_object(account, m) for m in self.models.account_models(account) if m.adapter
        ]
        page = paginate(sort_resources(deployed, order_by), page_size, page_token)
        return {
            "deployedModels": [apply_read_mask(d, read_mask, DEPLOYED_MODEL_FIELDS) for d in page.items],
            "nextPageToken": page.next_token,
            "totalSize": len(deployed),
        }

    def get(self, account: str, deployed_id: str, read_mask: str | None) -> dict[str, Any]:
        model = self._deployed(account, deployed_id)
        return apply_read_mask(self.models.deployed_object(account, model), read_mask, DEPLOYED_MODEL_FIELDS)

    def update(self, account: str, deployed_id: str, body: dict[str, Any], tenant: Tenant) -> dict[str, Any]:
        model = self._deployed(account, deployed_id)
        assert model.adapter is not None
        self._check_fields(body, tenant)
        if "model" in body and body["model"] != model.name:
            raise APIError(400, "model cannot change: unload this one and load the other", param="model")
        if "public" in body and bool(body["public"]) != (model.adapter.owner is None):
            raise APIError(
                400, "public cannot change on a loaded adapter: unload it and load it again", param="public"
            )
        self.models.set_labels(model.adapter.lora_id, body.get("displayName"), body.get("description"))
        return self.models.deployed_object(account, model)

    async def unload(self, account: str, deployed_id: str, tenant: Tenant) -> dict[str, Any]:
        model = self._deployed(account, deployed_id)
        assert model.adapter is not None
        await self.models.adapters.unload(model.adapter.lora_id, tenant)
        self.models.labels.pop(model.adapter.lora_id, None)
        return {}

    # -- helpers ---------------------------------------------------------------------------------------------

    def _deployed(self, account: str, deployed_id: str) -> AccountModel:
        name = f"accounts/{account}/deployedModels/{deployed_id}"
        try:
            model = self.models.find(account, deployed_id)
        except APIError:
            model = None
        if model is None or model.adapter is None:
            raise APIError(404, f"deployed model {name!r} not found", param="deployedModel", code="not_found")
        return model

    def _check_fields(self, body: dict[str, Any], tenant: Tenant) -> None:
        for field in ("displayName", "description", "deployment", "model"):
            if field in body and not isinstance(body[field], str):
                raise APIError(400, f"{field} must be a string", param=field)
        for field in ("default", "public", "serverless"):
            if field in body and not isinstance(body[field], bool):
                raise APIError(400, f"{field} must be a boolean", param=field)
        deployment = body.get("deployment")
        if deployment and deployment not in (
            self.models.deployment,
            self.models.deployment.rsplit("/", 1)[-1],
        ):
            raise APIError(
                400,
                f"deployment {deployment!r} does not exist; this server is {self.models.deployment!r}",
                param="deployment",
            )
        if body.get("serverless"):
            raise APIError(
                400, "serverless: a LoRA adapter is served on this server's deployment", param="serverless"
            )
        if body.get("default") is False:
            raise APIError(
                400,
                "default: this server's one deployment is the default of every model it serves",
                param="default",
            )
        if body.get("public") and not tenant.admin:
            raise APIError(
                400, "public: only an admin key can serve an adapter to every account", param="public"
            )

    def _loader(self, account: str, full: str, public: bool, tenant: Tenant) -> AdapterLoader:
        """How to serve the model `full`: a fine-tuning job's output model the caller sees, or an uploaded model
        of the account; 404 when there is neither."""
        runtime = self.models.runtime
        if runtime is not None:
            for job in runtime.service.succeeded_jobs():
                if full in job_adapter_names(job).aliases and sees(tenant.scope, job.owner):
                    if public:
                        raise APIError(
                            400, "public: a fine-tuned model is served to its job's account", param="public"
                        )

                    async def load_job_adapter(job: JobRecord = job) -> None:
                        await runtime.serve_job_adapter(job, strict=True)

                    return load_job_adapter
        if self.uploads is not None:
            ready = self.uploads.ready_model(account, full.rsplit("/", 1)[-1])
            if ready is not None:
                owner = None if public else account

                async def load_uploaded() -> None:
                    await self.models.adapters.load(
                        ready.model_id, str(ready.folder), (full,), check_base_model=False, owner=owner
                    )

                return load_uploaded
        raise APIError(
            404,
            f"model {full!r} not found: load a fine-tuned model or one created with POST /accounts/{account}/models",
            param="model",
            code="not_found",
        )
