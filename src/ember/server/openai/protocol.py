"""The request bodies of the OpenAI API: POST /v1/chat/completions, /v1/completions and /v1/embeddings, and
vLLM's /v1/tokenize and /v1/detokenize."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from ember.engine.sampling_params import MAX_LOGPROBS
from ember.server.common.errors import invalid_request
from ember.server.common.protocol import APIModel, NonNegativeInt, SamplingRequest
from ember.server.common.schema_docs import ANTHROPIC_THINKING, CHAT_CONTENT, OPENAI_TOOL_CHOICE, OPENAI_TOOLS

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


# Every field of a generation body is kept, also the ones no model here declares (`model_extra`): the serving
# code refuses the known-but-unsupported ones and logs the unknown ones (ember.server.common.field_policy).
KEEP_EXTRA = ConfigDict(extra="allow")
LogprobCount = Annotated[int, Field(ge=0, le=MAX_LOGPROBS)]


class GenerationRequest(SamplingRequest):
    """What /completions and /chat/completions share beyond the sampling fields: vLLM's, llama.cpp's and
    Fireworks' extras, and the other spellings of an output constraint (structured/constraint_fields.py)."""

    model_config = KEEP_EXTRA

    include_stop_str_in_output: bool | None = None  # vLLM: a matched stop string (or stop token) stays
    prompt_logprobs: LogprobCount | None = None  # vLLM: logprobs of every prompt token, k alternatives each
    return_token_ids: bool | None = None  # vLLM / Fireworks: prompt and generated token ids in the response
    raw_output: bool | None = None  # Fireworks: the prompt and completion exactly as the model saw them
    cache_salt: str | None = None  # vLLM's prompt_cache_isolation_key
    n_predict: Annotated[int, Field(ge=-1)] | None = None  # llama.cpp's max_tokens; -1: no limit
    # vLLM's constraints (the older guided_* and structured_outputs) and llama.cpp's grammar / json_schema.
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: dict[str, Any] | None = None
    grammar: str | None = None
    json_schema: dict[str, Any] | bool | None = None
    # Identifiers that change no output, in OpenAI's API either: tags of stored completions (ember stores
    # none), an end-user id for abuse monitoring, and a cache-routing hint (ember caches every prefix anyway).
    metadata: dict[str, Any] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    def constraint_fields(self) -> dict[str, Any]:
        """The output-constraint fields that were sent, by name (response_format first)."""
        names = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
        names += ("structured_outputs", "grammar", "json_schema")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def cache_key(self) -> str | None:
        return (
            self.prompt_cache_isolation_key
            if self.prompt_cache_isolation_key is not None
            else self.cache_salt
        )

    def token_budget(self, *names: str) -> int | None:
        """The generation limit: the first of `names` the body sets (max_tokens and its other names, in order of
        precedence), else llama.cpp's n_predict (-1: none); None when it sets none. An n_predict that says
        otherwise than the OpenAI name beside it is a 400."""
        named = next((getattr(self, name) for name in names if getattr(self, name) is not None), None)
        if self.n_predict is None:
            return named
        if self.n_predict == 0:
            raise invalid_request("n_predict must be -1 (no limit) or at least 1", param="n_predict")
        predict = None if self.n_predict < 0 else self.n_predict
        if named is not None and named != predict:
            raise invalid_request(
                f"n_predict and {names[0]} ask for different token limits; send one of them",
                param="n_predict",
            )
        return predict

    def sets_token_budget(self, *names: str) -> bool:
        return any(getattr(self, name) is not None for name in (*names, "n_predict"))


class ChatCompletionRequest(GenerationRequest):
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
    tool_choice: Annotated[Any, WithJsonSchema(OPENAI_TOOL_CHOICE)] = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | bool | None = None
    # Fireworks' Anthropic-style switch of the same: {"type": "enabled" | "disabled", "budget_tokens": n}.
    thinking: Annotated[dict[str, Any] | None, WithJsonSchema(ANTHROPIC_THINKING)] = None
    include_reasoning: bool | None = None  # vLLM: false leaves reasoning_content out of the reply
    # vLLM: the reply starts with the final message's text when that message has the reply's role.
    echo: bool | None = None
    # The deprecated single-function API: clients are told to send tools instead.
    functions: list[Any] | None = None
    function_call: Any = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = ("functions", "function_call")

    def reasoning_switch(self) -> str | bool | None:
        """reasoning_effort, or Fireworks' `thinking` as one (enabled: on, disabled: off); both is a 400."""
        if self.thinking is None:
            return self.reasoning_effort
        if self.reasoning_effort is not None:
            raise invalid_request("send thinking or reasoning_effort, not both", param="thinking")
        kind = self.thinking.get("type")
        budget = self.thinking.get("budget_tokens")
        if kind == "disabled":
            return False
        if kind != "enabled":
            raise invalid_request(
                f"thinking.type must be 'enabled' or 'disabled', got {kind!r}", param="thinking"
            )
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise invalid_request("thinking.budget_tokens must be a positive integer", param="thinking")
        return True

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None and self.logprobs is not False

    def num_top_logprobs(self) -> int:
        if self.top_logprobs is not None:
            return self.top_logprobs
        # Fireworks' legacy form sends logprobs as an int: the number of alternatives.
        return self.logprobs if isinstance(self.logprobs, int) and not isinstance(self.logprobs, bool) else 0


TokenIds = list[NonNegativeInt]


class CompletionRequest(GenerationRequest):
    # Order matters for pydantic's union matching: a list of ints is token ids, a list of lists is a batch of them.
    prompt: str | list[str] | TokenIds | list[TokenIds]
    best_of: Annotated[int, Field(ge=1)] | None = None
    echo: bool | None = None
    echo_last: NonNegativeInt | None = None
    logprobs: LogprobCount | None = None
    top_logprobs: LogprobCount | None = None  # Fireworks' other name of logprobs' count
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # Fireworks' other name of max_tokens
    suffix: str | None = None

    def num_logprobs(self) -> int | None:
        """The alternatives per token the request asks for (logprobs or top_logprobs); None: no logprobs."""
        if self.logprobs is not None and self.top_logprobs is not None and self.logprobs != self.top_logprobs:
            raise invalid_request(
                "logprobs and top_logprobs ask for different counts; send one of them", param="top_logprobs"
            )
        return self.logprobs if self.logprobs is not None else self.top_logprobs

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of single prompts, each text or token ids."""
        prompt: Any = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)


class EmbeddingRequest(APIModel):
    model_config = KEEP_EXTRA

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
