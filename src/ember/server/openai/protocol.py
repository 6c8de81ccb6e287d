"""The request bodies of the OpenAI API: POST /v1/chat/completions, /v1/completions and /v1/embeddings, and
vLLM's /v1/tokenize and /v1/detokenize."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from ember.engine.sampling_params import MAX_LOGPROBS
from ember.server.common.protocol import APIModel, NonNegativeInt, SamplingRequest
from ember.server.common.schema_docs import CHAT_CONTENT, OPENAI_TOOL_CHOICE, OPENAI_TOOLS

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class ChatMessage(APIModel):
    role: Annotated[str, WithJsonSchema({"enum": list(CHAT_ROLES)})]  # checked below, naming the roles
    content: Annotated[str | list[dict[str, Any]] | None, WithJsonSchema(CHAT_CONTENT)] = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[Any] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # vLLM's and OpenRouter's spelling of reasoning_content

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(CHAT_ROLES)}")
        return role

    @field_validator("content")
    @classmethod
    def _text_parts_only(
        cls, content: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        if isinstance(content, list):
            for part in content:
                if part.get("type") != "text":
                    raise ValueError(f"only text content parts are supported, got type {part.get('type')!r}")
                if not isinstance(part.get("text"), str):
                    raise ValueError("a text content part needs a string field 'text'")
        return content

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)

    def for_template(self) -> dict[str, Any]:
        # Chat templates know system, not OpenAI's newer "developer" role, which means the same.
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text(),
        }
        if self.name is not None:
            message["name"] = self.name
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.tool_calls is not None:
            message["tool_calls"] = self.tool_calls
        reasoning = self.reasoning_content if self.reasoning_content is not None else self.reasoning
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        return message


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None  # vLLM: the reply continues the final message's text
    chat_template_kwargs: dict[str, Any] | None = None
    # Checked by ember.structured.parse_tools / forced_tools and ember.chat.reasoning.template_switches.
    tools: Annotated[list[Any] | None, WithJsonSchema(OPENAI_TOOLS)] = None
    generic_tools: bool | None = None  # ember: false refuses tools on templates without tool support
    # ember, generic tool format under auto: open a call when the model gives that this probability or more
    tool_call_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    tool_choice: Annotated[Any, WithJsonSchema(OPENAI_TOOL_CHOICE)] = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | bool | None = None
    # The deprecated single-function API: clients are told to send tools instead.
    functions: list[Any] | None = None
    function_call: Any = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = ("functions", "function_call")

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None and self.logprobs is not False

    def num_top_logprobs(self) -> int:
        if self.top_logprobs is not None:
            return self.top_logprobs
        # Fireworks' legacy form sends logprobs as an int: the number of alternatives.
        return self.logprobs if isinstance(self.logprobs, int) and not isinstance(self.logprobs, bool) else 0


TokenIds = list[NonNegativeInt]


class CompletionRequest(SamplingRequest):
    # Order matters for pydantic's union matching: a list of ints is token ids, a list of lists is a batch of them.
    prompt: str | list[str] | TokenIds | list[TokenIds]
    best_of: Annotated[int, Field(ge=1)] | None = None
    echo: bool | None = None
    echo_last: NonNegativeInt | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
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
