"""The body of POST /v1/completions."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ember.server.common.protocol import NonNegativeInt, SamplingRequest

TokenIds = list[NonNegativeInt]


class CompletionRequest(SamplingRequest):
    # Order matters for pydantic's union matching: a list of ints is token ids, a list of lists is a batch of them.
    prompt: str | list[str] | TokenIds | list[TokenIds]
    best_of: Annotated[int, Field(ge=1)] | None = None
    echo: bool | None = None
    echo_last: NonNegativeInt | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: str | None = None
    return_token_ids: bool | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of single prompts, each text or token ids."""
        prompt: Any = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)
