"""POST /v1/embeddings: routed by `model` to the server's embedding model (an encoder with its own pooling and
normalization, served_encoder.py) or to the chat LLM (mean-pooled final hidden states); optionally truncated to
`dimensions`. An omitted `model` means the embedding model when the server has one, else the chat LLM.

The inputs are tokenized on the preparation threads. The LLM's run through the engine's scheduler
(LLMEngine.add_embedding_request): prefilled in chunks under the step's token budget beside running streams.
The encoder's run in bounded batches on the engine thread between steps. Both are abandoned when the client
disconnects, and capped per request at ServerConfig.max_embedding_tokens tokens in all."""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Request

from ember.server.common.errors import APIError, invalid_request
from ember.server.common.field_policy import check_fields
from ember.server.common.generation import ClientLeft, DisconnectWatch, EngineWatch
from ember.server.common.preparation import CONTEXT_LENGTH_EXCEEDED, new_id
from ember.server.common.served_encoder import ServedEncoder
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
    def __init__(self, state: ServingState, encoder: ServedEncoder | None = None) -> None:
        self.state = state
        self.known_fields = embeddings_fields()
        self.encoder = encoder

    def encoder_for(self, requested: str | None) -> ServedEncoder | None:
        """The embedding model a request's `model` names (an omitted one too), or None for the chat LLM."""
        encoder = self.encoder
        if encoder is None:
            return None
        if encoder.answers_to(requested):
            if encoder.is_cross_encoder:
                raise invalid_request(
                    f"{requested} is a cross-encoder: it scores pairs (POST /v1/rerank or /v1/score) and has no "
                    "embeddings",
                    param="model",
                )
            return encoder
        return encoder if requested is None and not encoder.is_cross_encoder else None

    async def create(self, body: EmbeddingRequest, http: Request) -> dict[str, Any]:
        return await self.answer(body, DisconnectWatch(http, self.state.engine))

    async def answer(self, body: EmbeddingRequest, watch: EngineWatch) -> dict[str, Any]:
        """The embeddings list, its engine request at the watch's priority; the watch is closed at the end."""
        state = self.state
        try:
            if body.model_extra:
                check_fields("/v1/embeddings", body.model_extra, self.known_fields, state.unknown_fields)
            encoder = self.encoder_for(body.model)
            model = (
                (body.model or encoder.model_id) if encoder is not None else state.models.resolve(body.model)
            )
            inputs = body.inputs()
            if not inputs:
                raise invalid_request("input must not be empty", param="input")
            if len(inputs) > state.config.max_embedding_inputs:
                raise invalid_request(
                    f"input has {len(inputs)} items; at most {state.config.max_embedding_inputs} per request",
                    param="input",
                )
            width = encoder.model.dimensions if encoder is not None else state.engine.model_config.hidden_size
            if body.dimensions is not None and body.dimensions > width:
                raise invalid_request(
                    f"dimensions must be at most {width} for this model", param="dimensions"
                )
            # Tokenized on the preparation threads: 256 long inputs take seconds, which the event loop cannot spare.
            if encoder is not None:
                token_ids = await state.preparation.run(
                    self._token_ids, inputs, encoder.encode, None, watch=watch
                )
                vectors = await watch.unless_disconnected(asyncio.ensure_future(encoder.embed(token_ids)))
                prompt_tokens = sum(len(ids) for ids in token_ids)
            else:
                encode = state.preparation.encoder.encode
                token_ids = await state.preparation.run(
                    self._token_ids, inputs, encode, state.max_model_len, watch=watch
                )
                vectors, prompt_tokens = await self._llm_embeddings(token_ids, watch)
        finally:
            watch.close()
        encoding_format = body.encoding_format or "float"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encode_vector(shorten(v, body.dimensions), encoding_format),
            }
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    async def _llm_embeddings(
        self, token_ids: list[list[int]], watch: EngineWatch
    ) -> tuple[list[list[float]], int]:
        # A client that leaves cancels the wait, and AsyncEngine.embed aborts the request: its KV is freed.
        embedding = asyncio.ensure_future(
            self.state.engine.embed(token_ids, new_id("embd"), priority=watch.priority)
        )
        try:
            output = await watch.unless_disconnected(embedding)
        except ValueError as error:
            raise invalid_request(str(error), param="input") from None
        if output.finish_reason == "abort":
            raise ClientLeft()
        if output.finish_reason != "stop":
            raise APIError(500, f"embedding failed: {output.error}", code="embedding_failed")
        return output.embeddings, output.num_prompt_tokens

    def _token_ids(
        self,
        inputs: list[str | list[int]],
        encode: Callable[[str | list[int], str], list[int]],
        max_len: int | None,
    ) -> list[list[int]]:
        """Token ids of each input; a 400 as soon as one is over the context (`max_len`, or `encode`'s own
        check) or all of them over the cap."""
        cap = self.state.config.max_embedding_tokens
        token_ids: list[list[int]] = []
        total = 0
        for i, item in enumerate(inputs):
            param = "input" if len(inputs) == 1 else f"input[{i}]"
            ids = encode(item, param)
            if max_len is not None and len(ids) > max_len:
                raise invalid_request(
                    f"{param} is {len(ids)} tokens long; this model's context length is {max_len}",
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
