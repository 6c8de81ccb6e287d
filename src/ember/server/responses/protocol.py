"""The body of POST /v1/responses (OpenAI's Responses API), and the fields ember refuses with a 400 naming them.

Every field of OpenAI's ResponseCreateParams is declared here: those ember honours are typed, the rest are
kept loose and refused by `refusals()` when they ask for something this server does not do (a hosted
conversation, stored prompt templates, moderation, a priority tier ...)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ember.engine.sampling_params import MAX_LOGPROBS
from ember.server.common.protocol import APIModel, NonZeroProbability, Temperature

LOGPROBS_INCLUDE = "message.output_text.logprobs"
# include values that name output of tools ember does not host, or encrypted reasoning it never produces
_UNSUPPORTED_INCLUDES = {
    "web_search_call.action.sources": "web search is not a tool this server runs",
    "code_interpreter_call.outputs": "code interpreter is not a tool this server runs",
    "computer_call_output.output.image_url": "computer use is not a tool this server runs",
    "file_search_call.results": "file search is not a tool this server runs",
    "message.input_image.image_url": "image inputs are not supported by this server",
    "reasoning.encrypted_content": "this server returns reasoning as plain text and never encrypts it",
}
_SERVICE_TIERS = ("auto", "default")  # ember has one tier; flex / priority / scale promise what it cannot
MAX_METADATA_PAIRS = 16


def include_refusal(values: list[str]) -> tuple[str, str] | None:
    """(param, message) for the first `include` value ember cannot return, else None."""
    for i, value in enumerate(values):
        if value in _UNSUPPORTED_INCLUDES:
            return f"include[{i}]", f"include {value!r}: {_UNSUPPORTED_INCLUDES[value]}"
        if value != LOGPROBS_INCLUDE:
            return f"include[{i}]", f"unknown include value {value!r}"
    return None


class ResponsesRequest(APIModel):
    model: str | None = None
    input: str | list[Any] | None = None  # items are checked in conversation.py, naming input[i].<field>
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: NonZeroProbability | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=min(MAX_LOGPROBS, 20))] | None = None
    include: list[str] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    safety_identifier: Annotated[str, Field(max_length=128)] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    service_tier: str | None = None
    # Refused when set (see refusals): features of OpenAI's platform that a self-hosted server does not have.
    background: bool | None = None
    background_options: dict[str, Any] | None = None
    conversation: Any = None
    prompt: Any = None
    context_management: Any = None
    moderation: Any = None
    access_programs: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    prompt_cache_options: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs, got {len(value)}")
        for key, item in value.items():
            if len(key) > 64:
                raise ValueError(f"keys are at most 64 characters, {key[:20]!r}... has {len(key)}")
            if len(item) > 512:
                raise ValueError(f"values are at most 512 characters; the value of {key!r} has {len(item)}")
        return value

    @property
    def stores(self) -> bool:
        return self.store is not False  # OpenAI's default is true

    @property
    def wants_logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or []) or self.top_logprobs is not None

    def refusals(self) -> tuple[str, str] | None:
        """(param, message) of the first field this server cannot honour, else None."""
        platform = {
            "conversation": "the Conversations API is not available on this server; chain responses with "
            "previous_response_id instead",
            "prompt": "stored prompt templates are not available on this server; send the text as input",
            "context_management": "server-side context compaction is not available on this server",
            "moderation": "moderation is not available on this server",
            "prompt_cache_options": "explicit prompt cache breakpoints are not available on this server (its "
            "prefix cache is automatic)",
            "image": "image inputs are not supported by this server",
        }
        for name, message in platform.items():
            value = getattr(self, name)
            if value is not None and value is not False:
                return name, message
        if self.background:
            if self.stream:
                return "stream", (
                    "background responses are not streamed on this server; poll GET /v1/responses/{id}, or "
                    "stream without background"
                )
            if not self.stores:
                return "store", "background responses must be stored (store true): they are polled by id"
        options = self.background_options or {}
        if options.get("completion_window", "soonest") != "soonest":
            return "background_options.completion_window", (
                "this server has no discounted slower processing; send 'soonest' or leave it out"
            )
        if options.get("continuation_id") is not None:
            return "background_options.continuation_id", (
                "this server runs background responses in arrival order; it has no prioritization by "
                "continuation_id"
            )
        if self.access_programs is not None and self.access_programs.get("cyber", "standard") != "standard":
            return "access_programs", "access programs other than 'standard' are not available on this server"
        if self.service_tier is not None and self.service_tier not in _SERVICE_TIERS:
            return "service_tier", (
                f"service_tier {self.service_tier!r} is not available on this server; send 'auto' or 'default'"
            )
        if self.prompt_cache_retention == "24h":
            return "prompt_cache_retention", (
                "prompt_cache_retention '24h' is not available: this server's prefix cache lives in memory "
                "and may evict at any time; send 'in_memory'"
            )
        refused = include_refusal(self.include or [])
        if refused is not None:
            return refused
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed when stream is true"
        return None
