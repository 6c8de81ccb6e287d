"""The body of POST /v1/embeddings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ember.server.common.protocol import APIModel, NonNegativeInt

TokenIds = list[NonNegativeInt]


class EmbeddingRequest(APIModel):
    model: str | None = None
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and all(isinstance(item, int) for item in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]
