"""Fireworks' model control plane over what ember serves: GET /accounts/{a}/models and /models/{id}.

The models of account `a` are the served models that answer to a name `accounts/a/models/<id>` and that the
caller's key sees: the base model (under the server's account), and each LoRA adapter under its owner's account
(a fine-tuning job's output model, an adapter loaded with `lora.load` or POST /v1/adapters). An adapter answering
under several accounts is listed under its owner's. Another account's adapters are not found, as if missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ember.server.common.errors import APIError
from ember.server.common.read_mask import apply_read_mask
from ember.server.common.served_models import ServedAdapter
from ember.server.fireworks.model_objects import (
    MODEL_FIELDS,
    BaseModelFacts,
    DeploymentLabels,
    adapter_model_object,
    base_model_object,
    deployed_model_object,
    deployed_model_ref,
)
from ember.tuning.job_objects import fireworks_job

if TYPE_CHECKING:
    from ember.server.admin.serving_adapters import AdapterServing
    from ember.server.common.services import ServingState
    from ember.server.fine_tuning.serving_jobs import FineTuningRuntime

MAX_PAGE_SIZE = 200  # Fireworks coerces larger pages to 200
_ORDER_FIELDS = ("name", "createTime", "displayName")


@dataclass(frozen=True)
class AccountModel:
    """One served model as account `account` lists it."""

    name: str  # accounts/<account>/models/<id>
    adapter: ServedAdapter | None  # None: the base model


class FireworksModels:
    def __init__(
        self, state: ServingState, adapters: AdapterServing, runtime: FineTuningRuntime | None
    ) -> None:
        self.state = state
        self.adapters = adapters
        self.runtime = runtime
        self.labels: dict[str, DeploymentLabels] = {}  # by lora_id, while the adapter is served
        self.deployment = f"accounts/{state.config.account}/deployments/{state.config.model_name}"

    # -- which models an account has -------------------------------------------------------------------------

    def account_models(self, account: str) -> list[AccountModel]:
        """The models of `account` that the current request's key sees (ServedModels filters by tenant)."""
        models = self.state.models
        prefix = f"accounts/{account}/models/"
        found = []
        if account == models.account:
            found.append(AccountModel(models.model_id, None))
        for adapter in models.adapters():
            names = sorted(name for name in adapter.names if name.startswith(prefix))
            owner_prefix = f"accounts/{adapter.owner}/models/"
            listed_by_owner = adapter.owner not in (None, account) and any(
                name.startswith(owner_prefix) for name in adapter.names
            )
            if names and not listed_by_owner:
                preferred = adapter.model_id if adapter.model_id in names else names[0]
                found.append(AccountModel(preferred, adapter))
        return found

    def find(self, account: str, model_id: str) -> AccountModel:
        """The model `accounts/<account>/models/<model_id>` (also given as that full name), or a 404."""
        full = model_id if model_id.startswith("accounts/") else f"accounts/{account}/models/{model_id}"
        for model in self.account_models(account):
            if model.name == full or (model.adapter is not None and full in model.adapter.names):
                return model
            if model.adapter is None and full in self.state.models.names:
                return model
        raise APIError(404, f"model {full!r} not found", param="model", code="not_found")

    # -- the routes ------------------------------------------------------------------------------------------

    def get(self, account: str, model_id: str, read_mask: str | None) -> dict[str, Any]:
        model = self.find(account, model_id)
        resource = self.model_object(model)
        if model.adapter is not None:  # Fireworks fills deployedModelRefs on GetModel only
            resource["deployedModelRefs"] = [deployed_model_ref(self.deployed_object(account, model))]
        return apply_read_mask(resource, read_mask, MODEL_FIELDS)

    # -- objects ---------------------------------------------------------------------------------------------

    def model_object(self, model: AccountModel) -> dict[str, Any]:
        state = self.state
        if model.adapter is None:
            engine = state.engine
            facts = BaseModelFacts(
                name=state.models.model_id,
                display_name=state.models.model_name,
                created=state.models.created,
                context_length=state.max_model_len,
                config=engine.model_config,
                source_format=engine.engine.model.source_format,
                chat_template=engine.chat_template,
                tunable=self.runtime is not None,
            )
            return base_model_object(facts)
        infos = {info.name: info for info in state.engine.list_loras()}
        return adapter_model_object(
            model.name,
            model.adapter,
            infos.get(model.adapter.lora_id),
            state.models.model_id,
            state.max_model_len,
            self.labels.get(model.adapter.lora_id, DeploymentLabels()),
            self._fine_tuning_job(model.adapter),
        )

    def deployed_object(self, account: str, model: AccountModel) -> dict[str, Any]:
        assert model.adapter is not None
        labels = self.labels.get(model.adapter.lora_id, DeploymentLabels())
        return deployed_model_object(account, model.name, model.adapter, self.deployment, labels)

    def _fine_tuning_job(self, adapter: ServedAdapter) -> str | None:
        if self.runtime is None or adapter.path is None:
            return None
        for job in self.runtime.service.succeeded_jobs():
            if str(self.runtime.service.adapter_path(job)) == adapter.path:
                return str(fireworks_job(job)["name"])
        return None

    def set_labels(self, lora_id: str, display_name: str | None, description: str | None) -> None:
        current = self.labels.get(lora_id, DeploymentLabels())
        self.labels[lora_id] = DeploymentLabels(
            display_name if display_name is not None else current.display_name,
            description if description is not None else current.description,
            time.time(),
        )


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_token: str


def sort_resources(resources: list[dict[str, Any]], order_by: str | None) -> list[dict[str, Any]]:
    """AIP-132 `orderBy`: comma-separated fields, each ascending or with ` desc`; the default is by name."""
    ordered = sorted(resources, key=lambda r: r["name"])
    if not order_by or not order_by.strip():
        return ordered
    keys = []
    for part in order_by.split(","):
        words = part.split()
        if (
            not words
            or len(words) > 2
            or words[0] not in _ORDER_FIELDS
            or words[1:] not in ([], ["desc"], ["asc"])
        ):
            raise APIError(
                400,
                f"orderBy {order_by!r}: each item must be one of {', '.join(_ORDER_FIELDS)}, optionally with ' desc'",
                param="orderBy",
            )
        keys.append((words[0], words[1:] == ["desc"]))
    for field, descending in reversed(keys):  # stable sorts, last key first
        ordered.sort(key=lambda r, f=field: str(r.get(f, "")), reverse=descending)
    return ordered


def paginate(resources: list[dict[str, Any]], page_size: int | None, page_token: str | None) -> Page:
    """Fireworks' pages: at most `pageSize` (default 50, coerced to 200), `pageToken` from the last page."""
    if page_size is not None and page_size < 0:
        raise APIError(400, f"pageSize must not be negative, got {page_size}", param="pageSize")
    size = min(page_size or 50, MAX_PAGE_SIZE)
    start = 0
    if page_token:
        if not page_token.isdigit() or int(page_token) > len(resources):
            raise APIError(400, f"unknown pageToken {page_token!r}", param="pageToken")
        start = int(page_token)
    end = start + size
    return Page(resources[start:end], str(end) if end < len(resources) else "")
