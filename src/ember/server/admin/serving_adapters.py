"""Serving LoRA adapters as models: load a PEFT folder into the engine and give it its API names.

Used by POST/DELETE /v1/adapters (folders under the adapter roots only, adapter_roots.py), by `ember serve
--lora name=path`, and by the fine-tuning runtime when a job succeeds (and at start-up for jobs that succeeded
earlier). The engine checks that an adapter fits the base model (rank, target modules, shapes, declared base
model); its LoraError is the client's 400. An adapter loaded by a key is served to that key's account only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.lora.adapter import base_model_matches
from ember.lora.errors import LoraError
from ember.lora.manager import LoraInfo
from ember.lora.peft_config import read_peft_config
from ember.server.admin.adapter_roots import AdapterPathError, AdapterRoots
from ember.server.common.errors import APIError
from ember.server.common.served_models import ServedAdapter, ServedModels
from ember.server.common.tenancy import Tenant

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class AdapterServing:
    def __init__(self, engine: AsyncEngine, models: ServedModels, roots: AdapterRoots | None = None) -> None:
        self.engine = engine
        self.models = models
        self.roots = roots or AdapterRoots()
        self.job_visible: Callable[[str, Tenant], bool] = lambda job_id, tenant: False

    def allow_job_folders(self, data_dir: Path, job_visible: Callable[[str, Tenant], bool]) -> None:
        """Let POST /v1/adapters load the adapters and checkpoints of fine-tuning jobs the caller sees."""
        self.roots.allow_job_folders(data_dir)
        self.job_visible = job_visible

    async def load_requested(
        self, name: str, requested: str, tenant: Tenant, *, check_base_model: bool = True
    ) -> ServedAdapter:
        """POST /v1/adapters: a folder under the adapter roots (adapter_roots.py), served to the caller's
        account (an admin's: to every key). Errors name the folder as the client wrote it."""
        self._check_name(name)
        try:
            resolved = self.roots.resolve(requested, lambda job_id: self.job_visible(job_id, tenant))
        except AdapterPathError as error:
            raise APIError(400, str(error), param="path", code="invalid_adapter_path") from error
        owner = None if tenant.admin else tenant.account
        try:
            return await self.load(
                name, str(resolved.folder), check_base_model=check_base_model, owner=owner, shown_as=requested
            )
        except APIError as error:
            error.message = resolved.client_message(error.message)
            raise

    async def load(
        self,
        name: str,
        path: str,
        aliases: tuple[str, ...] = (),
        *,
        check_base_model: bool = True,
        owner: str | None = None,
        shown_as: str | None = None,
    ) -> ServedAdapter:
        """Register the PEFT folder at `path` (trusted: the server's own or the operator's) as model `name`,
        served to the account `owner` (None: every key); 400 when it does not fit, 409 on a taken name.

        With `check_base_model`, an adapter whose adapter_config.json names another base model is refused even
        when its shapes happen to fit (models of one family share shapes)."""
        self._check_name(name)
        if not Path(path).is_dir():
            raise APIError(400, f"adapter folder {shown_as or path!r} does not exist", param="path")
        try:
            if check_base_model:
                self._check_base_model(path, shown_as or path)
            await self.engine.register_lora(name, path)
        except LoraError as error:
            raise APIError(400, str(error), param="path", code="invalid_adapter") from error
        try:
            return self.models.add_adapter(name, path, aliases, owner)
        except ValueError as error:
            await self.engine.unregister_lora(name)
            raise APIError(409, str(error), param="name", code="conflict") from error

    def _check_name(self, name: str) -> None:
        if not _ADAPTER_NAME.fullmatch(name):
            raise APIError(
                400, f"adapter name {name!r} must be 1-128 letters, digits, '_', '.' or '-'", param="name"
            )
        if name in self.models.names or self.models.adapter(name, any_owner=True) is not None:
            raise APIError(409, f"a model named {name!r} is already served", param="name", code="conflict")

    async def unload(self, requested: str, tenant: Tenant) -> ServedAdapter:
        """Unload an adapter of the caller's account; one served to every key only with an admin key."""
        adapter = self.models.adapter(requested)
        if adapter is None:
            raise APIError(404, f"no adapter {requested!r} is loaded", param="name", code="not_found")
        if not tenant.admin and adapter.owner != tenant.account:
            raise APIError(
                403,
                f"adapter {requested!r} is served to every key; only an admin key can unload it",
                param="name",
                code="permission_denied",
            )
        try:
            await self.engine.unregister_lora(adapter.lora_id)
        except LoraError as error:  # still used by running requests
            raise APIError(409, str(error), param="name", code="adapter_in_use") from error
        self.models.remove_adapter(adapter.lora_id)
        return adapter

    def _check_base_model(self, path: str, shown_as: str) -> None:
        declared = read_peft_config(path).base_model_name  # LoraError when there is no usable config
        served = (self.models.model_name, self.engine.engine.model.name)
        if declared and not any(base_model_matches(declared, name) for name in served):
            raise APIError(
                400,
                f"adapter {shown_as!r} was trained on {declared!r} but this server serves {served[0]!r}; "
                "send check_base_model: false to load it anyway",
                param="path",
                code="base_model_mismatch",
            )

    def listing(self) -> dict[str, Any]:
        infos = {info.name: info for info in self.engine.list_loras()}
        return {
            "object": "list",
            "data": [adapter_object(a, infos.get(a.lora_id)) for a in self.models.adapters()],
        }

    def get(self, requested: str) -> dict[str, Any]:
        adapter = self.models.adapter(requested)
        if adapter is None:
            raise APIError(404, f"no adapter {requested!r} is loaded", param="name", code="not_found")
        infos = {info.name: info for info in self.engine.list_loras()}
        return adapter_object(adapter, infos.get(adapter.lora_id))


def adapter_object(adapter: ServedAdapter, info: LoraInfo | None) -> dict[str, Any]:
    # No server path: a client names adapters by their names, and the file system is the operator's business.
    return {
        "object": "adapter",
        "id": adapter.model_id,
        "name": adapter.lora_id,
        "aliases": sorted(adapter.names - {adapter.model_id}),
        "owned_by": adapter.owner,
        "created": adapter.created,
        "rank": None if info is None else info.rank,
        "alpha": None if info is None else info.alpha,
        "target_modules": None if info is None else list(info.target_modules),
        "loaded": None if info is None else info.loaded,
        "active_requests": None if info is None else info.active_requests,
    }
