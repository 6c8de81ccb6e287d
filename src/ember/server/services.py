"""The serving objects the routers call, attached to the FastAPI app at build time."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ember.server.serving_chat import ChatServing
from ember.server.serving_completions import CompletionServing
from ember.server.serving_embeddings import EmbeddingServing
from ember.server.serving_messages import MessagesServing
from ember.server.serving_tokenize import TokenizeServing
from ember.server.state import ServingState


@dataclass(frozen=True)
class Services:
    state: ServingState
    completions: CompletionServing
    chat: ChatServing
    messages: MessagesServing
    embeddings: EmbeddingServing
    tokenize: TokenizeServing

    @classmethod
    def build(cls, state: ServingState) -> Services:
        return cls(
            state=state,
            completions=CompletionServing(state),
            chat=ChatServing(state),
            messages=MessagesServing(state),
            embeddings=EmbeddingServing(state),
            tokenize=TokenizeServing(state),
        )


def services_of(request: Request) -> Services:
    return request.app.state.services
