"""The model names this server answers to, and the model objects of GET /v1/models."""

from __future__ import annotations

import time
from typing import Any

from ember.server.config import ServerConfig
from ember.server.errors import APIError


class ServedModels:
    """One served model under its full Fireworks-style id, its short name and any configured aliases."""

    def __init__(self, config: ServerConfig, max_model_len: int) -> None:
        self.model_id = config.model_id
        self.owner = config.account
        self.max_model_len = max_model_len
        self.created = int(time.time())
        self.names = frozenset((config.model_id, config.model_name, *config.aliases))

    def resolve(self, requested: str | None) -> str:
        """The name to echo in responses; no model means the served one; an unknown name is a 404."""
        if requested is None:
            return self.model_id
        if requested not in self.names:
            raise APIError(
                404,
                f"the model {requested!r} does not exist on this server; it serves {self.model_id!r}",
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

    def listing(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.card()]}
