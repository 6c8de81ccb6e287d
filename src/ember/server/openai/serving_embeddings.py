"""POST /v1/embeddings: mean-pooled hidden states of the served LLM, optionally truncated to `dimensions`."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from ember.server.common.errors import invalid_request
from ember.server.common.preparation import CONTEXT_LENGTH_EXCEEDED
from ember.server.common.services import ServingState
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

    async def create(self, body: EmbeddingRequest) -> dict[str, Any]:
        state = self.state
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
            raise invalid_request(f"dimensions must be at most {hidden} for this model", param="dimensions")
        # Tokenized on the preparation threads: 256 long inputs take seconds, which the event loop cannot spare.
        token_ids = await state.preparation.run(self._token_ids, inputs)
        vectors = await state.engine.embed(token_ids)
        encoding_format = body.encoding_format or "float"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encode_vector(shorten(v, body.dimensions), encoding_format),
            }
            for i, v in enumerate(vectors)
        ]
        prompt_tokens = sum(len(ids) for ids in token_ids)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    def _token_ids(self, inputs: list[str | list[int]]) -> list[list[int]]:
        state = self.state
        token_ids: list[list[int]] = []
        for i, item in enumerate(inputs):
            param = "input" if len(inputs) == 1 else f"input[{i}]"
            ids = state.preparation.encoder.encode(item, param)
            if len(ids) > state.max_model_len:
                raise invalid_request(
                    f"{param} is {len(ids)} tokens long; this model's context length is {state.max_model_len}",
                    param=param,
                    code=CONTEXT_LENGTH_EXCEEDED,
                )
            token_ids.append(ids)
        return token_ids
