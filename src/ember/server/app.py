"""The FastAPI application: OpenAI/Fireworks routes under /v1 and /inference/v1, Anthropic's Messages,
health and metrics, with auth, a body-size limit and OpenAI's error envelope on every failure."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from fastapi import FastAPI

from ember.server.admin import routes as admin_routes
from ember.server.admin.adapter_roots import AdapterRoots
from ember.server.admin.serving_adapters import AdapterServing
from ember.server.anthropic import routes as anthropic_routes
from ember.server.anthropic.serving_messages import MessagesServing
from ember.server.batches import routes as batch_routes
from ember.server.batches.serving import BatchesServing
from ember.server.common.browser_guard import install_browser_guard
from ember.server.common.config import FineTuningConfig, ServerConfig
from ember.server.common.errors import install_error_handlers
from ember.server.common.metrics import ServerMetrics
from ember.server.common.middleware import APIKeyMiddleware, BodyLimitMiddleware
from ember.server.common.model_registry import ModelRegistry, RegistryConfig
from ember.server.common.openapi import install_docs
from ember.server.common.served_encoder import ServedEncoder
from ember.server.common.server_access import key_ring, log_access_policy, open_tenant
from ember.server.common.services import Services
from ember.server.fine_tuning import routes as fine_tuning_routes
from ember.server.fine_tuning.dataset_transfer import SIGNED_PREFIX
from ember.server.fine_tuning.serving_dpo_jobs import DpoJobsServing
from ember.server.fine_tuning.serving_files import FilesServing
from ember.server.fine_tuning.serving_jobs import FineTuningRuntime, JobsServing
from ember.server.fireworks import routes as fireworks_routes
from ember.server.fireworks.control_plane import FireworksControlPlane
from ember.server.fireworks.model_uploads import SIGNED_MODEL_PREFIX
from ember.server.model_serving import other_model_services, serving_state
from ember.server.openai import rerank_routes
from ember.server.openai import routes as openai_routes
from ember.server.openai.serving_chat import ChatServing
from ember.server.openai.serving_completions import CompletionServing
from ember.server.openai.serving_embeddings import EmbeddingServing
from ember.server.openai.serving_rerank import RerankServing
from ember.server.openai.serving_tokenize import TokenizeServing
from ember.server.responses import routes as responses_routes
from ember.server.responses.serving import responses_serving

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.models.encoder.encoder_model import EncoderModel

logger = logging.getLogger(__name__)


def _installed_version() -> str:
    try:
        return version("ember")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


EMBER_VERSION = _installed_version()

API_PREFIXES = (
    "/v1",
    "/inference/v1",
)  # Fireworks' SDK posts to {base}/v1; its docs give OpenAI .../inference/v1
API_DESCRIPTION = (
    "OpenAI, Fireworks and Anthropic compatible inference and LoRA fine-tuning. Every route under /v1 is "
    "also served under /inference/v1 (Fireworks' OpenAI base URL); only /v1 is listed. Errors use OpenAI's "
    "envelope, except under /v1/messages, which uses Anthropic's."
)


def is_upload_path(path: str) -> bool:
    """Uploads of training data have their own, larger limit (FineTuningConfig.max_upload_bytes)."""
    return (
        path.endswith(":upload")
        or path.startswith((f"{SIGNED_PREFIX}/", f"{SIGNED_MODEL_PREFIX}/"))
        or any(path == f"{prefix}/files" for prefix in API_PREFIXES)
    )


def build_app(
    engine: AsyncEngine,
    config: ServerConfig,
    fine_tuning: FineTuningConfig | None = None,
    embedding_model: EncoderModel | None = None,
    more_models: RegistryConfig | None = None,
) -> FastAPI:
    """The app serving `engine`; starting the app starts the engine's step loop, stopping it shuts it down.

    With `fine_tuning`, the files, datasets and fine-tuning job routes work over its data directory, and the
    job worker runs while the app does; without it they answer 404 saying so. With `embedding_model`, that
    encoder serves /v1/embeddings, /v1/rerank and /v1/score under its own name (and when `model` is omitted).
    With `more_models`, the models it lists are served beside `engine`'s, each on an engine of its own
    (server/common/model_registry.py); `engine`'s model stays the default."""
    keys = key_ring(config)
    encoder = None if embedding_model is None else ServedEncoder(embedding_model, engine, config.account)
    state = serving_state(engine, config, encoder, ServerMetrics(config.model_id))
    adapter_roots = AdapterRoots(config.adapter_dirs)
    adapter_serving = AdapterServing(engine, state.models, adapter_roots)
    tuning = (
        None
        if fine_tuning is None
        else FineTuningRuntime(engine, config.model_name, fine_tuning, adapter_serving, config.account)
    )
    registry: ModelRegistry | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_access_policy(config, keys)
        await engine.start()
        try:
            if tuning is not None:
                await tuning.start()
                logger.info("fine-tuning data directory: %s", tuning.data_dir)
            if registry is not None:
                await registry.start()
            if batches is not None:
                await batches.start()
            yield
        finally:
            if batches is not None:
                await batches.stop()
            if registry is not None:
                await registry.stop()
            if tuning is not None:
                await tuning.stop()
            state.preparation.close()
            await engine.shutdown()

    app = FastAPI(
        title="ember",
        version=EMBER_VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    chat, completions, embeddings = (
        ChatServing(state),
        CompletionServing(state),
        EmbeddingServing(state, encoder),
    )
    services = Services(
        state=state,
        completions=completions,
        chat=chat,
        messages=MessagesServing(state),
        embeddings=embeddings,
        tokenize=TokenizeServing(state),
        adapters=adapter_serving,
        files=None if tuning is None else FilesServing(tuning),
        jobs=None if tuning is None else JobsServing(tuning),
        dpo_jobs=None if tuning is None else DpoJobsServing(tuning),
        rerank=RerankServing(state, encoder),
        responses=responses_serving(state, None if fine_tuning is None else fine_tuning.data_dir),
        control_plane=FireworksControlPlane(state, adapter_serving, tuning),
    )
    if more_models is not None and more_models.specs:
        default_services = services  # the other models share its responses store and adapter roots
        registry = ModelRegistry(
            default_services,
            more_models,
            lambda other, slot: other_model_services(other, slot, config, default_services, adapter_roots),
        )
        services = replace(services, registry=registry)
    batches = None if tuning is None else BatchesServing.build(tuning, services, config)
    app.state.services = services = replace(services, batches=batches)
    for prefix in API_PREFIXES:
        for routes in (
            openai_routes,
            rerank_routes,
            anthropic_routes,
            fine_tuning_routes,
            batch_routes,
            fireworks_routes,
            admin_routes,
            responses_routes,
        ):
            app.include_router(routes.router, prefix=prefix, include_in_schema=prefix == API_PREFIXES[0])
    app.include_router(admin_routes.root_router)
    app.include_router(fine_tuning_routes.root_router)
    app.include_router(openai_routes.root_router)
    app.include_router(fireworks_routes.root_router)
    install_docs(app, API_DESCRIPTION)
    install_error_handlers(app)
    app.add_middleware(
        APIKeyMiddleware, keys=keys, open_tenant=open_tenant(config), public_account=config.account
    )
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes, exempt=is_upload_path)
    # added last, so they run first: preflights are answered and foreign origins refused before auth
    install_browser_guard(app, config.allowed_origins, not config.has_keys, config.allowed_hosts)
    return app
