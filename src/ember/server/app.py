"""The FastAPI application: OpenAI/Fireworks routes under /v1 and /inference/v1, Anthropic's Messages,
health and metrics, with auth, a body-size limit and OpenAI's error envelope on every failure."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from ember.server.auth import APIKeyMiddleware
from ember.server.body_limit import BodyLimitMiddleware
from ember.server.config import ServerConfig
from ember.server.errors import install_error_handlers
from ember.server.metrics import ServerMetrics
from ember.server.prompts import PromptEncoder
from ember.server.routes import completions, embeddings, health, messages, models
from ember.server.served_models import ServedModels
from ember.server.services import Services
from ember.server.state import ServingState

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

logger = logging.getLogger(__name__)

API_PREFIXES = (
    "/v1",
    "/inference/v1",
)  # Fireworks' SDK posts to {base}/v1; its docs give OpenAI .../inference/v1


def build_app(engine: AsyncEngine, config: ServerConfig) -> FastAPI:
    """The app serving `engine`; starting the app starts the engine's step loop, stopping it shuts it down."""
    state = ServingState(
        engine=engine,
        config=config,
        models=ServedModels(config, engine.max_model_len),
        encoder=PromptEncoder(engine.tokenizer, engine.model_config.vocab_size, engine.chat_template),
        metrics=ServerMetrics(config.model_id),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.api_keys:
            logger.info(
                "API keys: %d configured; /v1 routes need Authorization: Bearer <key>", len(config.api_keys)
            )
        else:
            logger.warning("no API keys configured: the API is open to anyone who can reach this address")
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()

    app = FastAPI(title="ember", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = Services.build(state)
    for prefix in API_PREFIXES:
        for module in (completions, messages, embeddings, models):
            app.include_router(module.router, prefix=prefix)
    app.include_router(health.router)
    install_error_handlers(app)
    if config.api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=config.api_keys)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)  # added last: runs first
    return app
