"""Several base models in one server: each has its own engine (own engine thread and KV cache) and its own serving
objects; a request runs on the model its `model` names (or one of that model's adapters), through `lease`.

The first model is the default: requests without `model` (or naming the embedding model, or an unknown name,
which its ServedModels refuses with a 404) go there, and it stays loaded. Every other model is loaded at
start-up or, when lazy, by its first request, off the event loop while the other models keep serving; concurrent
requests wait for the one load. A model with a keep-alive is unloaded once it has had no request for that long.
A load is refused with a 503 naming the model and the numbers when it would not fit in memory (memory_budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ember.engine.stats import EngineStats
from ember.model_engines import ModelOpener, served_name
from ember.model_specs import ModelSpec
from ember.models.errors import ModelLoadError
from ember.server.common.errors import APIError
from ember.server.common.memory_budget import (
    GIB,
    MemoryBudgetError,
    MemoryEstimate,
    available_bytes,
    check_fits,
)
from ember.server.common.metrics import ServerMetrics, merge_expositions
from ember.server.common.model_slot import ModelSlot, engine_busy, engine_health

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.server.common.services import Services

logger = logging.getLogger(__name__)
REAPER_INTERVAL_S = 0.25  # how often idle models are looked at: keep_alive 0 unloads within this


@dataclass(frozen=True)
class RegistryConfig:
    """The models beyond the default one and how they are loaded (`ember serve`'s --model / --models-file)."""

    specs: tuple[ModelSpec, ...]
    opener: ModelOpener
    memory_budget_bytes: int | None = None
    """--memory-budget-gib: what all loaded models together may take (estimates); None: only the system's limit."""
    default_estimate: MemoryEstimate | None = None
    """The default model's share of the budget (it is loaded before the registry exists)."""
    opened: Mapping[int, tuple[AsyncEngine, MemoryEstimate]] = field(default_factory=dict)
    """Engines already loaded (not started) for specs[i]: `ember serve` loads the models that are not lazy before
    it serves, so a bad one is one line and exit 1, not a failed start-up."""


ServicesBuilder = Callable[["AsyncEngine", ModelSlot], "Services"]


class ModelRegistry:
    """The default model's services plus the slots of the other models, with their loads and unloads."""

    def __init__(self, default: Services, config: RegistryConfig, build: ServicesBuilder) -> None:
        self.default = default
        self.default_estimate = config.default_estimate
        self.opener = config.opener
        self.build = build
        self.config = config
        self.account = default.state.config.account
        self.slots: list[ModelSlot] = []
        taken = set(default.state.models.names)
        for spec in config.specs:
            name = served_name(spec)
            model_id = f"accounts/{self.account}/models/{name}"
            slot = ModelSlot(spec, name, model_id, ServerMetrics(model_id))
            clash = slot.names & taken
            if clash:
                raise ValueError(f"the model name(s) {', '.join(sorted(clash))} are given to two models")
            taken |= slot.names
            self.slots.append(slot)
        self.closing = False
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the engines `ember serve` opened before the server (RegistryConfig.opened), loads any other
        model that is not lazy (in order; a failure stops the start-up), then watches for idle models."""
        for index, slot in enumerate(self.slots):
            opened = self.config.opened.get(index)
            if opened is not None:
                await self._start_engine(slot, *opened, time.perf_counter())
            elif not slot.spec.lazy:
                await self._ensure_loaded(slot)
        self._reaper = asyncio.create_task(self._reap_idle())

    def begin_stop(self) -> None:
        """From any thread (the shutdown's drain): no model loads from now on."""
        self.closing = True

    async def stop(self) -> None:
        self.closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for slot in self.slots:
            if slot.loading is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(slot.loading)
            if slot.services is not None:
                await self._unload(slot, "the server is stopping")

    def loaded_engines(self) -> list[AsyncEngine]:
        """The default engine first, then every loaded model's: what a shutdown drains."""
        others = [s.services.state.engine for s in self.slots if s.services is not None]
        return [self.default.state.engine, *others]

    # -- routing ------------------------------------------------------------------------------------------

    def slot_for(self, requested: str | None) -> ModelSlot | None:
        """The slot of the model (or adapter) a request names; None: the default model's."""
        if requested is None or requested in self.default.state.models.names:
            return None
        for slot in self.slots:
            if requested in slot.names:
                return slot
            if slot.services is not None and slot.services.state.models.adapter(requested) is not None:
                return slot
        return None

    def loaded_services(self) -> list[Services]:
        """The services of every loaded model beyond the default one."""
        return [slot.services for slot in self.slots if slot.services is not None]

    def check_adapter_name(self, name: str, base_model: str | None) -> None:
        """POST /v1/adapters across models: a name no model of the server answers to yet (409), on a base model
        that stays loaded (400: an unload would drop an adapter added at run time; a models file's `lora` table
        serves it with every load)."""
        default = self.default.state.models
        if name in default.names or default.adapter(name, any_owner=True) is not None or self.slot_for(name):
            raise APIError(409, f"a model named {name!r} is already served", param="name", code="conflict")
        slot = None if base_model is None else self.slot_for(base_model)
        if slot is not None and slot.spec.keep_alive_s is not None:
            raise APIError(
                400,
                f"base_model {base_model!r} is unloaded after {slot.spec.keep_alive_s:g} s idle, which would drop "
                "this adapter; list it in the models file's `lora` table of that model instead",
                param="base_model",
            )

    def resolve(self, requested: str | None) -> str:
        """The name to echo for `requested` (a Fireworks batch job's model): any served model or adapter; an
        unknown name is the default model's 404."""
        if requested is not None and self.slot_for(requested) is not None:
            return requested
        return self.default.state.models.resolve(requested)

    @contextlib.asynccontextmanager
    async def lease(self, requested: str | None) -> AsyncIterator[Services]:
        """The services of the model a request names, loaded first when it is not; held until the request's
        handler returns (a stream is then in its engine, which keeps the model busy until it ends)."""
        slot = self.slot_for(requested)
        if slot is None:
            yield self.default
            return
        slot.leases += 1  # before any wait: a model being loaded for this request is not idle
        try:
            services = slot.services if slot.services is not None else await self._ensure_loaded(slot)
            yield services
        finally:
            slot.leases -= 1
            slot.last_used = time.monotonic()

    # -- loading and unloading ----------------------------------------------------------------------------

    async def _ensure_loaded(self, slot: ModelSlot) -> Services:
        if slot.services is not None:
            return slot.services
        if slot.loading is None:
            slot.loading = asyncio.create_task(self._load(slot))
            slot.loading.add_done_callback(lambda _: setattr(slot, "loading", None))
        # shielded: a client that leaves does not cancel the load the others wait for
        return await asyncio.shield(slot.loading)

    async def _load(self, slot: ModelSlot) -> Services:
        if self.closing:
            raise APIError(503, "the server is shutting down", code="server_shutting_down")
        estimate = await asyncio.to_thread(self.opener.estimate, slot.spec)
        try:
            check_fits(
                slot.name, estimate, self._loaded_bytes(), self.config.memory_budget_bytes, available_bytes()
            )
        except MemoryBudgetError as error:
            slot.last_error = str(error)
            logger.warning("%s", error)
            raise APIError(503, str(error), param="model", code="insufficient_memory") from None
        started = time.perf_counter()
        logger.info(
            "loading model %s from %s (~%.2f GiB)", slot.name, slot.spec.path, estimate.total_bytes / GIB
        )
        try:
            engine = await asyncio.to_thread(self.opener.open, slot.spec)
        except (ModelLoadError, OSError, ValueError) as error:
            slot.last_error = f"cannot load the model {slot.name!r}: {error}"
            logger.error("%s", slot.last_error)
            raise APIError(503, slot.last_error, param="model", code="model_load_failed") from None
        return await self._start_engine(slot, engine, estimate, started)

    async def _start_engine(
        self, slot: ModelSlot, engine: AsyncEngine, estimate: MemoryEstimate, started: float
    ) -> Services:
        services = self.build(engine, slot)
        await engine.start()
        threads = self.opener.threads(slot.spec)
        if threads:  # on its own engine thread: torch's thread count is per thread under OpenMP
            await engine.run_on_engine(lambda llm: llm.runner.set_num_threads(threads))
        slot.services, slot.estimate, slot.last_error = services, estimate, None
        slot.loads += 1
        slot.last_used = time.monotonic()
        logger.info("model %s loaded in %.2f s", slot.name, time.perf_counter() - started)
        return services

    def _loaded_bytes(self) -> int:
        total = 0 if self.default_estimate is None else self.default_estimate.total_bytes
        for slot in self.slots:
            if slot.services is not None and slot.estimate is not None:
                total += slot.estimate.total_bytes
        return total

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(REAPER_INTERVAL_S)
            now = time.monotonic()
            for slot in self.slots:
                if slot.services is None or slot.spec.keep_alive_s is None or slot.leases:
                    continue
                if engine_busy(slot.services.state.engine):
                    slot.last_used = now  # the keep-alive counts from the end of the last request
                    continue
                if now - slot.last_used >= slot.spec.keep_alive_s:
                    await self._unload(slot, f"idle for {slot.spec.keep_alive_s:g} s (keep-alive)")

    async def _unload(self, slot: ModelSlot, why: str) -> None:
        services, slot.services = slot.services, None  # from here requests load it again
        if services is None:
            return
        await services.state.engine.shutdown()
        services.state.preparation.close()
        del services
        gc.collect()
        _return_freed_memory()
        logger.info("model %s unloaded: %s", slot.name, why)

    # -- what /v1/models, /health and /metrics show ---------------------------------------------------------

    def model_cards(self) -> list[dict[str, Any]]:
        """Every model beyond the default one (its adapters when loaded), loaded or not."""
        cards: list[dict[str, Any]] = []
        for slot in self.slots:
            if slot.services is not None:
                cards += slot.services.state.models.listing()["data"]
            else:
                cards.append(slot.unloaded_card(self.account))
        return cards

    def card_of(self, requested: str) -> dict[str, Any] | None:
        slot = self.slot_for(requested)
        if slot is None:
            return None
        if slot.services is not None:
            return slot.services.state.models.card_of(requested)
        return slot.unloaded_card(self.account)

    def health(self) -> list[dict[str, Any]]:
        default = self.default.state
        return [engine_health(default.models.model_id, "loaded", default.engine)] + [
            slot.health_row() for slot in self.slots
        ]

    def render_metrics(self) -> str:
        """Every model's metrics under its own model_name label, each metric's HELP and TYPE once."""
        default = self.default.state
        parts = [default.metrics.render(default.engine.stats())]
        for slot in self.slots:
            stats = slot.services.state.engine.stats() if slot.services is not None else EngineStats()
            parts.append(slot.metrics.render(stats))
        return merge_expositions(parts)


def _return_freed_memory() -> None:
    """glibc keeps freed heap (ember.threads.tune_allocator raised its trim threshold): give it back now."""
    name = ctypes.util.find_library("c")
    if name is not None:
        ctypes.CDLL(name).malloc_trim(0)
