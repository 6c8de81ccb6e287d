"""The model names this server answers to, and the model objects of GET /v1/models.

Besides the base model, LoRA adapters registered with the engine are served as models of their own: each under
its engine name, its `accounts/<account>/models/<name>` id and any more aliases (a fine-tuning job's
`ft:<base>:<suffix>:<job id>` name). A request naming one runs on the base model with that adapter. An adapter with an owner (loaded by that
account's key, or a fine-tuning job's) is served to that account's keys and admin keys only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from ember.server.common.config import ServerConfig
from ember.server.common.errors import APIError
from ember.server.common.tenancy import viewing_tenant


@dataclass(frozen=True)
class ServedAdapter:
    """One adapter as clients see it; `lora_id` is its name in the engine's adapter registry."""

    lora_id: str
    model_id: str  # accounts/<account>/models/<lora_id>
    names: frozenset[str]
    path: str | None
    created: int
    owner: str | None = None  # the account it is served to (and admins); None: every key


class ServedModels:
    """The base model under its full Fireworks-style id, its short name and any configured aliases, plus the
    adapters registered at run time (safe to change from any thread)."""

    def __init__(self, config: ServerConfig, max_model_len: int) -> None:
        self.model_id = config.model_id
        self.model_name = config.model_name
        self.account = config.account
        self.owner = config.account
        self.max_model_len = max_model_len
        self.created = int(time.time())
        self.names = frozenset((config.model_id, config.model_name, *config.aliases))
        self._adapters: dict[str, ServedAdapter] = {}  # by lora_id
        self._side_models: list[
            tuple[frozenset[str], dict[str, Any]]
        ] = []  # (names, card): the embedding model
        self._lock = threading.Lock()

    def add_side_model(self, names: frozenset[str], card: dict[str, Any]) -> None:
        """A model served beside the chat model by routes of its own (the embedding model): listed by
        GET /v1/models, and named in the error a generation request for it gets."""
        with self._lock:
            clash = names & self._all_names(exclude="")
            if clash:
                raise ValueError(f"the model name(s) {', '.join(sorted(clash))} are already served")
            self._side_models.append((names, card))

    def adapter_model_id(self, lora_id: str) -> str:
        return f"accounts/{self.account}/models/{lora_id}"

    def add_adapter(
        self, lora_id: str, path: str | None, aliases: tuple[str, ...] = (), owner: str | None = None
    ) -> ServedAdapter:
        """Serve `lora_id` (already registered with the engine) under its names, to the account `owner` only
        (None: to every key); ValueError on a name clash."""
        model_id = self.adapter_model_id(lora_id)
        names = frozenset((lora_id, model_id, *aliases))
        with self._lock:
            clash = names & self._all_names(exclude=lora_id)
            if clash:
                raise ValueError(f"the model name(s) {', '.join(sorted(clash))} are already served")
            adapter = ServedAdapter(lora_id, model_id, names, path, int(time.time()), owner)
            self._adapters[lora_id] = adapter
        return adapter

    def remove_adapter(self, lora_id: str) -> ServedAdapter | None:
        with self._lock:
            return self._adapters.pop(lora_id, None)

    def adapter(self, requested: str, *, any_owner: bool = False) -> ServedAdapter | None:
        """The adapter a request's `model` names, or None for the base model (or an unknown name). Another
        account's adapter is unknown to a request (tenancy.viewing_tenant), unless `any_owner`."""
        viewer = None if any_owner else viewing_tenant()
        with self._lock:
            return next(
                (
                    a
                    for a in self._adapters.values()
                    if requested in a.names and (viewer is None or viewer.sees_adapter(a.owner))
                ),
                None,
            )

    def adapters(self) -> list[ServedAdapter]:
        """The adapters the current request's tenant sees (all of them outside a request)."""
        viewer = viewing_tenant()
        with self._lock:
            visible = [a for a in self._adapters.values() if viewer is None or viewer.sees_adapter(a.owner)]
        return sorted(visible, key=lambda a: a.lora_id)

    def lora_id(self, requested: str | None) -> str | None:
        """The engine adapter to run a request for `requested` with; None for the base model."""
        if requested is None or requested in self.names:
            return None
        adapter = self.adapter(requested)
        return None if adapter is None else adapter.lora_id

    def lookup(self, requested: str | None) -> tuple[str, str | None]:
        """(the name to echo in responses, the engine adapter to run with or None for the base model) of a
        request's `model`; an unknown name is a 404."""
        name = self.resolve(requested)
        return name, self.lora_id(requested)

    def resolve(self, requested: str | None) -> str:
        """The name to echo in responses; no model means the served one; an unknown name is a 404."""
        if requested is None:
            return self.model_id
        side = next((card for names, card in self._side_models if requested in names), None)
        if side is not None and requested not in self.names:
            raise APIError(
                400,
                f"the model {requested!r} is an embedding model: it serves /v1/embeddings, /v1/rerank and "
                f"/v1/score only; generation runs on {self.model_id!r}",
                param="model",
                code="model_not_supported",
            )
        if requested not in self.names and self.adapter(requested) is None:
            raise APIError(
                404,
                f"the model {requested!r} does not exist on this server; it serves {self.model_id!r} "
                "and the adapters listed by GET /v1/models",
                param="model",
                code="model_not_found",
            )
        return requested

    def card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owner,
            "context_length": self.max_model_len,
            "aliases": sorted(self.names - {self.model_id}),
        }

    def card_of(self, requested: str) -> dict[str, Any]:
        """The model object of the base model or an adapter (404 for an unknown name)."""
        side = next((card for names, card in self._side_models if requested in names), None)
        if side is not None:
            return side
        self.resolve(requested)
        adapter = None if requested in self.names else self.adapter(requested)
        return self.card() if adapter is None else self._adapter_card(adapter)

    def listing(self) -> dict[str, Any]:
        side = [card for _, card in self._side_models]
        return {
            "object": "list",
            "data": [self.card(), *side, *(self._adapter_card(a) for a in self.adapters())],
        }

    def _adapter_card(self, adapter: ServedAdapter) -> dict[str, Any]:
        return {
            "id": adapter.model_id,
            "object": "model",
            "created": adapter.created,
            "owned_by": self.owner,
            "context_length": self.max_model_len,
            "parent": self.model_id,
            "root": self.model_id,
            "aliases": sorted(adapter.names - {adapter.model_id}),
        }

    def _all_names(self, exclude: str) -> frozenset[str]:
        names = set(self.names)
        for side_names, _ in self._side_models:
            names |= side_names
        for lora_id, adapter in self._adapters.items():
            if lora_id != exclude:
                names |= adapter.names
        return frozenset(names)
