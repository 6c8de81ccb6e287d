"""One base model of a several-model server as the registry tracks it, loaded or not: its names (known before it
loads), its state, and what /v1/models and /health show of it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ember.model_specs import ModelSpec
from ember.server.common.memory_budget import MemoryEstimate
from ember.server.common.metrics import ServerMetrics

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.server.common.services import Services


@dataclass
class ModelSlot:
    spec: ModelSpec
    name: str
    model_id: str
    metrics: ServerMetrics  # kept across unloads, so /metrics counters never go back
    services: Services | None = None  # set while loaded
    estimate: MemoryEstimate | None = None  # its share of the memory budget while loaded
    loading: asyncio.Task[Services] | None = None
    leases: int = 0  # requests routed here and not yet answered (or waiting for its load)
    last_used: float = field(default_factory=time.monotonic)
    last_error: str | None = None
    loads: int = 0  # since start-up: a keep-alive unload and a request make one more

    @property
    def names(self) -> frozenset[str]:
        lora_names = {name for name, _ in self.spec.loras}
        return frozenset((self.name, self.model_id, *self.spec.aliases, *lora_names))

    @property
    def state(self) -> str:
        if self.services is not None:
            return "loaded"
        return "loading" if self.loading is not None else "unloaded"

    def unloaded_card(self, account: str) -> dict[str, Any]:
        """Its GET /v1/models object while it is not loaded (its context length is known once it loads)."""
        return {
            "id": self.model_id,
            "object": "model",
            "created": 0,
            "owned_by": account,
            "aliases": sorted({self.name, *self.spec.aliases}),
            "status": self.state,
        }

    def health_row(self) -> dict[str, Any]:
        engine = None if self.services is None else self.services.state.engine
        row = engine_health(self.model_id, self.state, engine)
        if self.last_error is not None and self.services is None:
            row["last_error"] = self.last_error
        row["loads"] = self.loads
        keep_alive = self.spec.keep_alive_s
        row["keep_alive_s"] = -1 if keep_alive is None else keep_alive
        return row


def engine_health(model_id: str, state: str, engine: AsyncEngine | None) -> dict[str, Any]:
    if engine is None:
        return {"model": model_id, "state": state}
    stats = engine.stats()
    return {
        "model": model_id,
        "state": state if engine.is_running else "engine_unavailable",
        "num_running": stats.num_running,
        "num_waiting": stats.num_waiting,
    }


def engine_busy(engine: AsyncEngine) -> bool:
    stats = engine.stats()  # counts requests not yet seen by the engine thread as waiting
    return stats.num_running > 0 or stats.num_waiting > 0 or engine.engine.has_unfinished()
