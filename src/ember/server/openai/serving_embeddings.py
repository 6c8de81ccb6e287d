"""POST /v1/embeddings: mean-pooled final hidden states of the served LLM, optionally truncated to `dimensions`.

The inputs are tokenized on the preparation threads, then run through the engine's scheduler
(LLMEngine.add_embedding_request): prefilled in chunks under the step's token budget beside running streams,
aborted when the client disconnects, and capped per request at ServerConfig.max_embedding_tokens tokens in all."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import numpy as np
from fastapi import Request

from ember.server.common.errors import APIError, invalid_request
from ember.server.common.field_policy import check_fields
from ember.server.common.generation import ClientLeft, DisconnectWatch, EngineWatch
from ember.server.common.preparation import CONTEXT_LENGTH_EXCEEDED, new_id
from ember.server.common.services import ServingState
from ember.server.common.unsupported_fields import embeddings_fields
from ember.server.openai.protocol import EmbeddingRequest


def shorten(vector: list[float], dimensions: int | None) -> list[float]:
    """The first `dimensions` values scaled back to unit length (how OpenAI's `dimensions` is defined)."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # What the OpenAI SDK decodes: little-endian float32, base64.
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


class EmbeddingServing:
    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.known_fields = embeddings_fields()

    async def create(self, body: EmbeddingRequest, http: Request) -> dict[str, Any]:
        return await self.answer(body, DisconnectWatch(http, self.state.engine))

    async def answer(self, body: EmbeddingRequest, watch: EngineWatch) -> dict[str, Any]:
        """The embeddings list, its engine request at the watch's priority; the watch is closed at the end."""
        state = self.state
        try:
            if body.model_extra:
                check_fields("/v1/embeddings", body.model_extra, self.known_fields, state.unknown_fields)
            model = state.models.resolve(body.model)
            inputs = body.inputs()
            if not inputs:
                raise invalid_request("input must not be empty", param="input")
            if len(inputs) > state.config.max_embedding_inputs:
                raise invalid_request(
                    f"input has {len(inputs)} items; at most {state.config.max_embedding_inputs} per request",
                    param="input",
                )
            hidden = state.engine.model_config.hidden_size
            if body.dimensions is not None and body.dimensions > hidden:
                raise invalid_request(
                    f"dimensions must be at most {hidden} for this model", param="dimensions"
                )
            # Tokenized on the preparation threads: 256 long inputs take seconds, which the event loop cannot spare.
            token_ids = await state.preparation.run(self._token_ids, inputs, watch=watch)
            # A client that leaves cancels the wait, and AsyncEngine.embed aborts the request: its KV is freed.
            embedding = asyncio.ensure_future(
                state.engine.embed(token_ids, new_id("embd"), priority=watch.priority)
            )
            try:
                output = await watch.unless_disconnected(embedding)
            except ValueError as error:
                raise invalid_request(str(error), param="input") from None
        finally:
            watch.close()
        if output.finish_reason == "abort":
            raise ClientLeft()
        if output.finish_reason != "stop":
            raise APIError(500, f"embedding failed: {output.error}", code="embedding_failed")
        encoding_format = body.encoding_format or "float"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encode_vector(shorten(v, body.dimensions), encoding_format),
            }
            for i, v in enumerate(output.embeddings)
        ]
        prompt_tokens = output.num_prompt_tokens
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    def _token_ids(self, inputs: list[str | list[int]]) -> list[list[int]]:
        """Token ids of each input; a 400 as soon as one is over the context or all of them over the cap."""
        state = self.state
        cap = state.config.max_embedding_tokens
        token_ids: list[list[int]] = []
        total = 0
        for i, item in enumerate(inputs):
            param = "input" if len(inputs) == 1 else f"input[{i}]"
            ids = state.preparation.encoder.encode(item, param)
            if len(ids) > state.max_model_len:
                raise invalid_request(
                    f"{param} is {len(ids)} tokens long; this model's context length is {state.max_model_len}",
                    param=param,
                    code=CONTEXT_LENGTH_EXCEEDED,
                )
            total += len(ids)
            if total > cap:
                raise invalid_request(
                    f"input has {total} tokens in its first {i + 1} items, over this server's limit of {cap} "
                    "tokens per embeddings request (max_embedding_tokens); split it into several requests",
                    param="input",
                )
            token_ids.append(ids)
        return token_ids
