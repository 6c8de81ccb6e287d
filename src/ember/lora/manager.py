"""The adapters an engine knows: registered by name, loaded on demand, evicted least-recently-used.

Running requests pin their adapter (acquire / release); a pinned adapter is never evicted, nor is one
registered from memory (it has no file to be reloaded from), so the number loaded can exceed `max_loaded`
while they are in use. Every registration gets a fresh `key` ("name#serial") that the engine keeps as each
sequence's `lora_key` (callers name an adapter by its name, `lora_id`): the prefix cache is keyed on it, so
KV computed with an adapter is never reused by a different adapter, not even one registered later under the
same name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ember.lora.adapter import LoraAdapter, load_peft_adapter
from ember.lora.errors import LoraError
from ember.models.config import ModelConfig


@dataclass(frozen=True)
class LoraInfo:
    """What /v1/models and the admin endpoints show about one adapter."""

    name: str
    path: str | None  # None: registered from memory
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    loaded: bool
    active_requests: int


@dataclass
class _Entry:
    name: str
    key: str
    path: str | None
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    adapter: LoraAdapter | None  # on the model's device and dtype when loaded
    refs: int = 0

    def info(self) -> LoraInfo:
        return LoraInfo(
            self.name,
            self.path,
            self.rank,
            self.alpha,
            self.target_modules,
            self.adapter is not None,
            self.refs,
        )


class LoraManager:
    def __init__(
        self,
        max_loaded: int,
        model_config: ModelConfig,
        *,
        base_model_name: str | None = None,
        strict_base_model: bool = False,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self.max_loaded = max_loaded
        self.model_config = model_config
        self.base_model_name = base_model_name
        self.strict_base_model = strict_base_model
        self.device = torch.device(device)
        self.dtype = dtype
        self._entries: dict[str, _Entry] = {}
        self._by_key: dict[str, _Entry] = {}
        self._loaded: OrderedDict[str, None] = OrderedDict()  # names, least recently used first
        self._serial = 0
        self._lock = threading.RLock()  # the engine thread mutates; HTTP handlers may list

    # ---- registry -------------------------------------------------------------------------------------

    def register(self, name: str, source: str | LoraAdapter) -> LoraInfo:
        """Add an adapter from a PEFT folder (loaded and checked now, so errors surface at once) or from
        memory.
        LoraError if the name is taken or the adapter does not fit the base model."""
        if not name:
            raise LoraError("an adapter needs a non-empty name")
        with self._lock:
            if name in self._entries:
                raise LoraError(f"an adapter named {name!r} is already registered; unregister it first")
        if isinstance(source, LoraAdapter):
            source.check_fits(self.model_config)
            adapter, path = source, None
        else:
            adapter, path = self._load(name, source), source
        prepared = self._prepare(adapter, name)
        with self._lock:
            if name in self._entries:
                raise LoraError(f"an adapter named {name!r} is already registered; unregister it first")
            self._serial += 1
            entry = _Entry(
                name,
                f"{name}#{self._serial}",
                path,
                adapter.rank,
                adapter.alpha,
                adapter.target_modules,
                prepared,
            )
            self._entries[name] = entry
            self._by_key[entry.key] = entry
            self._loaded[name] = None
            self._evict(keep=name)
            return entry.info()

    def unregister(self, name: str) -> None:
        with self._lock:
            entry = self._entry(name)
            if entry.refs:
                raise LoraError(f"adapter {name!r} is in use by {entry.refs} running request(s)")
            del self._entries[name]
            del self._by_key[entry.key]
            self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def list_adapters(self) -> list[LoraInfo]:
        """Every registered adapter, in registration order."""
        with self._lock:
            return [entry.info() for entry in self._entries.values()]

    @property
    def num_loaded(self) -> int:
        with self._lock:
            return len(self._loaded)

    # ---- use ------------------------------------------------------------------------------------------

    def get(self, name: str) -> LoraAdapter:
        """The adapter, loaded from its folder if it was evicted; marks it most recently used."""
        with self._lock:
            entry = self._entry(name)
            return self._ensure_loaded(entry)

    def acquire(self, name: str) -> str:
        """Pin the adapter for a running request (loading it if needed); returns its key (a sequence's lora_key)."""
        with self._lock:
            entry = self._entry(name)
            self._ensure_loaded(entry)
            entry.refs += 1
            return entry.key

    def release(self, key: str) -> None:
        with self._lock:
            entry = self._by_key.get(key)
            if entry is None or entry.refs == 0:
                raise LoraError(f"release of adapter key {key!r} that is not acquired")
            entry.refs -= 1
            self._evict()

    def adapter_for_key(self, key: str) -> LoraAdapter:
        """The loaded adapter behind a key from acquire(); the request pins it, so it is in memory."""
        with self._lock:
            entry = self._by_key.get(key)
            if entry is None or entry.adapter is None:
                raise LoraError(f"adapter key {key!r} is not loaded")
            return entry.adapter

    # ---- internals ------------------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise LoraError(f"unknown LoRA adapter {name!r} (registered: {known})")
        return entry

    def _load(self, name: str, path: str) -> LoraAdapter:
        return load_peft_adapter(
            path,
            self.model_config,
            name,
            base_model_name=self.base_model_name,
            strict_base_model=self.strict_base_model,
        )

    def _prepare(self, adapter: LoraAdapter, name: str) -> LoraAdapter:
        prepared = adapter.to(self.device, self.dtype)
        prepared.name = name
        return prepared

    def _ensure_loaded(self, entry: _Entry) -> LoraAdapter:
        if entry.adapter is None:
            assert entry.path is not None  # adapters from memory are never evicted
            entry.adapter = self._prepare(self._load(entry.name, entry.path), entry.name)
            self._loaded[entry.name] = None
            self._loaded.move_to_end(entry.name)
            self._evict(keep=entry.name)
        else:
            self._loaded.move_to_end(entry.name)
        return entry.adapter

    def _evict(self, keep: str | None = None) -> None:
        excess = len(self._loaded) - self.max_loaded
        for name in list(self._loaded):
            if excess <= 0:
                return
            entry = self._entries[name]
            if name == keep or entry.refs or entry.path is None:
                continue
            entry.adapter = None
            del self._loaded[name]
            excess -= 1
