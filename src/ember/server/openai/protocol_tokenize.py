"""The bodies of POST /v1/tokenize and /v1/detokenize (vLLM's shapes)."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from ember.server.common.protocol import APIModel, NonNegativeInt
from ember.server.openai.protocol import ChatMessage


class TokenizeRequest(APIModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _prompt_xor_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt and messages")
        return self


class DetokenizeRequest(APIModel):
    model: str | None = None
    tokens: list[NonNegativeInt]
