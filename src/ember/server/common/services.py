"""The serving objects the routers call, attached to the FastAPI app at build time."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ember.server.admin.serving_adapters import AdapterServing
from ember.server.anthropic.serving_messages import MessagesServing
from ember.server.common.errors import APIError
from ember.server.common.state import ServingState
from ember.server.fine_tuning.serving_files import FilesServing
from ember.server.fine_tuning.serving_jobs import FineTuningRuntime, JobsServing
from ember.server.openai.serving_chat import ChatServing
from ember.server.openai.serving_completions import CompletionServing
from ember.server.openai.serving_embeddings import EmbeddingServing
from ember.server.openai.serving_tokenize import TokenizeServing


@dataclass(frozen=True)
class Services:
    state: ServingState
    completions: CompletionServing
    chat: ChatServing
    messages: MessagesServing
    embeddings: EmbeddingServing
    tokenize: TokenizeServing
    adapters: AdapterServing
    files: FilesServing | None = None  # None: the server runs without a data directory
    jobs: JobsServing | None = None

    @classmethod
    def build(
        cls, state: ServingState, adapters: AdapterServing, tuning: FineTuningRuntime | None = None
    ) -> Services:
        return cls(
            state=state,
            completions=CompletionServing(state),
            chat=ChatServing(state),
            messages=MessagesServing(state),
            embeddings=EmbeddingServing(state),
            tokenize=TokenizeServing(state),
            adapters=adapters,
            files=None if tuning is None else FilesServing(tuning),
            jobs=None if tuning is None else JobsServing(tuning, state.config.account),
        )

    def require_files(self) -> FilesServing:
        if self.files is None:
            raise _tuning_disabled()
        return self.files

    def require_jobs(self) -> JobsServing:
        if self.jobs is None:
            raise _tuning_disabled()
        return self.jobs


def _tuning_disabled() -> APIError:
    return APIError(
        404,
        "files, datasets and fine-tuning are not enabled on this server (it was started without a data "
        "directory; see ember serve --data-dir)",
        code="fine_tuning_disabled",
    )


def services_of(request: Request) -> Services:
    return request.app.state.services
