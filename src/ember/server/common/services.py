"""What the routes and the serving modules share, attached to the FastAPI app at build time: the serving state
(the engine and the server-side objects built once at start-up) and the serving object of each API surface."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from ember.server.common.config import ServerConfig
from ember.server.common.errors import APIError
from ember.server.common.field_policy import UnknownFieldLog
from ember.server.common.metrics import ServerMetrics
from ember.server.common.preparation import Preparation
from ember.server.common.served_models import ServedModels

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.server.admin.serving_adapters import AdapterServing
    from ember.server.anthropic.serving_messages import MessagesServing
    from ember.server.batches.serving import BatchesServing
    from ember.server.common.model_registry import ModelRegistry
    from ember.server.fine_tuning.serving_dpo_jobs import DpoJobsServing
    from ember.server.fine_tuning.serving_files import FilesServing
    from ember.server.fine_tuning.serving_jobs import JobsServing
    from ember.server.fireworks.control_plane import FireworksControlPlane
    from ember.server.openai.serving_chat import ChatServing
    from ember.server.openai.serving_completions import CompletionServing
    from ember.server.openai.serving_embeddings import EmbeddingServing
    from ember.server.openai.serving_rerank import RerankServing
    from ember.server.openai.serving_tokenize import TokenizeServing
    from ember.server.responses.serving import ResponsesServing


@dataclass(frozen=True)
class ServingState:
    engine: AsyncEngine
    config: ServerConfig
    models: ServedModels
    preparation: Preparation  # every request's prompt ids and SamplingParams, built off the event loop
    metrics: ServerMetrics
    unknown_fields: UnknownFieldLog = field(default_factory=UnknownFieldLog)  # body fields logged once each

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len


@dataclass(frozen=True)
class Services:
    """Built by app.build_app, which knows every surface."""

    state: ServingState
    completions: CompletionServing
    chat: ChatServing
    messages: MessagesServing
    embeddings: EmbeddingServing
    tokenize: TokenizeServing
    adapters: AdapterServing
    rerank: RerankServing
    files: FilesServing | None = None  # None: the server runs without a data directory
    jobs: JobsServing | None = None
    dpo_jobs: DpoJobsServing | None = None
    batches: BatchesServing | None = None
    responses: ResponsesServing | None = None
    control_plane: FireworksControlPlane | None = None  # Fireworks' models and LoRA routes (set by build_app)
    registry: ModelRegistry | None = None  # the other base models, when the server has more than one

    @contextlib.asynccontextmanager
    async def for_model(self, requested: str | None) -> AsyncIterator[Services]:
        """The services of the base model a request's `model` names (loading it first if it has to), held
        while the request's handler runs; this server's own when it serves one model."""
        if self.registry is None:
            yield self
            return
        async with self.registry.lease(requested) as services:
            yield services

    def require_files(self) -> FilesServing:
        if self.files is None:
            raise _tuning_disabled()
        return self.files

    def require_responses(self) -> ResponsesServing:
        assert self.responses is not None  # build_app always makes one (in memory without a data directory)
        return self.responses

    def require_jobs(self) -> JobsServing:
        if self.jobs is None:
            raise _tuning_disabled()
        return self.jobs

    def require_dpo_jobs(self) -> DpoJobsServing:
        if self.dpo_jobs is None:
            raise _tuning_disabled()
        return self.dpo_jobs

    def require_batches(self) -> BatchesServing:
        if self.batches is None:
            raise _tuning_disabled()
        return self.batches


def _tuning_disabled() -> APIError:
    return APIError(
        404,
        "files, datasets, batches and fine-tuning are not enabled on this server (it was started without a data "
        "directory; see ember serve --data-dir)",
        code="fine_tuning_disabled",
    )


def services_of(request: Request) -> Services:
    return request.app.state.services
