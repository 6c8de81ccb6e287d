"""One served model's engine from its ModelSpec: the server-wide engine settings with the model's own KV budget,
context length, threads and adapters, its memory estimate, and the load itself (blocking: run it off the loop)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ember.engine.engine_config import EngineConfig
from ember.lora.config import LoraConfig
from ember.model_specs import ModelSpec
from ember.models.generation_choice import GenerationChoice
from ember.models.loader import LoadConfig, load_model
from ember.server.common.memory_budget import GIB, MemoryEstimate, weights_bytes
from ember.threads import StepGate, release_openmp_team

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine


@dataclass(frozen=True)
class EngineSettings:
    """The server-wide settings every model's engine starts from (`ember serve`'s flags)."""

    engine: EngineConfig
    weight_format: str = "auto"
    device: str = "cpu"
    quantization: str | None = None
    threads: int | None = None
    """--threads: a fixed count for every engine; None follows the idle cores (engine/llm_engine's governor)."""
    generation: GenerationChoice = GenerationChoice()
    """--generation-config / --override-generation-config: every model's sampling defaults."""


class ModelOpener:
    """Loads models as their specs say; every engine it opens shares its step gate (see AsyncEngine.step_gate)."""

    def __init__(self, settings: EngineSettings, step_gate: StepGate | None) -> None:
        self.settings = settings
        self.step_gate = step_gate  # None: a server of one model, nothing to take turns with

    def engine_config(self, spec: ModelSpec) -> EngineConfig:
        base = self.settings.engine
        threads = spec.threads or self.settings.threads
        scheduler = base.scheduler
        if spec.max_model_len is not None:
            scheduler = replace(scheduler, max_model_len=spec.max_model_len)
        loras = base.lora.adapters + spec.loras
        return replace(
            base,
            scheduler=scheduler,
            kv_cache_gib=spec.kv_cache_gib or base.kv_cache_gib,
            lora=LoraConfig(max_loaded=base.lora.max_loaded, adapters=loras) if spec.loras else base.lora,
            # a pinned count stays; else the governor follows the idle cores
            adapt_threads=0 if threads else len(os.sched_getaffinity(0)),
        )

    def threads(self, spec: ModelSpec) -> int | None:
        return spec.threads or self.settings.threads

    def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        """Weights as they will be held plus the KV cache budget (an explicit block count when one is set)."""
        config = self.engine_config(spec)
        path = spec.path if spec.path is not None else _default_model_path()
        quantized = self.settings.quantization is not None and Path(path).is_dir()
        weights = weights_bytes(path) // (4 if quantized else 1)  # ~q8_0: a quarter of fp32
        return MemoryEstimate(weights, int(config.kv_cache_gib * GIB))

    def open(self, spec: ModelSpec) -> AsyncEngine:
        """Loads the weights and allocates the KV cache (blocking; ModelLoadError for a bad file)."""
        from ember.engine.async_engine import AsyncEngine

        settings = self.settings
        loaded = load_model(
            LoadConfig(
                spec.path,
                settings.weight_format,
                settings.device,
                quantization=settings.quantization,
                generation=settings.generation,
            )
        )
        engine = AsyncEngine.from_loaded(loaded, self.engine_config(spec), self.step_gate)
        # A load on a worker thread leaves that thread's OpenMP team idle beside the engines' (threads.py says
        # what an idle team costs every step); the main thread's is released the same way after start-up.
        release_openmp_team()
        return engine


def _default_model_path() -> str:
    from ember.models.default_model import default_gguf_path

    return default_gguf_path()


def served_name(spec: ModelSpec) -> str:
    """The name a model beyond the default one answers to before it is loaded: its spec's, else its file's stem
    or its folder's name (known without reading the file, so a lazy model is listed and routed by it)."""
    if spec.name is not None:
        return spec.name
    assert spec.path is not None  # only the default model may be the embedded one
    path = Path(spec.path)
    return path.stem if path.suffix.lower() == ".gguf" else path.name
