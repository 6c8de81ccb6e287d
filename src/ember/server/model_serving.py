"""What one base model is served with: its serving state (engine, names, preparation step, metrics) and its API
surfaces. The default model's are built by app.build_app; every other model's by `other_model_services` when the
model registry loads it (the responses store and the adapter roots are the server's, shared)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ember.server.admin.adapter_roots import AdapterRoots
from ember.server.admin.serving_adapters import AdapterServing
from ember.server.anthropic.serving_messages import MessagesServing
from ember.server.common.config import ServerConfig
from ember.server.common.metrics import ServerMetrics
from ember.server.common.preparation import Preparation, SamplingLimits
from ember.server.common.prompts import PromptEncoder
from ember.server.common.served_encoder import ServedEncoder
from ember.server.common.served_models import ServedModels
from ember.server.common.services import Services, ServingState
from ember.server.openai.serving_chat import ChatServing
from ember.server.openai.serving_completions import CompletionServing
from ember.server.openai.serving_embeddings import EmbeddingServing
from ember.server.openai.serving_rerank import RerankServing
from ember.server.openai.serving_tokenize import TokenizeServing
from ember.server.responses.serving import ResponsesServing

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.server.common.model_registry import ModelSlot


def serving_state(
    engine: AsyncEngine, config: ServerConfig, encoder: ServedEncoder | None, metrics: ServerMetrics
) -> ServingState:
    """The state every surface of one model shares; the adapters its engine loaded at start are served."""
    models = ServedModels(config, engine.max_model_len)
    if encoder is not None:
        models.add_side_model(encoder.names, encoder.card())
    vocab_size = engine.model_config.vocab_size
    limits = SamplingLimits(vocab_size, config.max_n, defaults=engine.default_params)  # the checkpoint's
    state = ServingState(
        engine=engine,
        config=config,
        models=models,
        preparation=Preparation(
            PromptEncoder(engine.tokenizer, vocab_size, engine.chat_template),
            models,
            limits,
            engine.max_model_len,
        ),
        metrics=metrics,
    )
    for info in engine.list_loras():  # registered with the engine at start-up (--lora, a models file's lora)
        state.models.add_adapter(info.name, info.path)
    return state


def other_model_services(
    engine: AsyncEngine, slot: ModelSlot, config: ServerConfig, default: Services, roots: AdapterRoots
) -> Services:
    """The generation surfaces of a model beside the default one. Its embeddings and rerank run on its own LLM
    (the embedding model is reached through the default model's names); files, jobs and batches stay the
    server's."""
    own = replace(config, model_name=slot.name, aliases=slot.spec.aliases)
    state = serving_state(engine, own, None, slot.metrics)
    shared = default.require_responses()
    return Services(
        state=state,
        completions=CompletionServing(state),
        chat=ChatServing(state),
        messages=MessagesServing(state),
        embeddings=EmbeddingServing(state, None),
        tokenize=TokenizeServing(state),
        adapters=AdapterServing(engine, state.models, roots),
        rerank=RerankServing(state, None),
        responses=ResponsesServing(state, shared.store, shared.background),
    )
