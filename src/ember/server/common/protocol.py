"""Request bodies: the pydantic base every body model uses, the sampling fields of completions and chat
completions (OpenAI names, Fireworks and vLLM extras; Anthropic's Messages maps onto them too), and reading a
JSON body into a model, with OpenAI-style 400s that name the bad parameter."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ember.server.common.errors import invalid_request

# Every optional field accepts null; unknown fields are ignored, as OpenAI-compatible servers do.
NonNegativeInt = Annotated[int, Field(ge=0)]
SeedInt = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]


class APIModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StreamOptions(APIModel):
    include_usage: bool | None = None


class PredictionTextPart(APIModel):
    type: Literal["text"]
    text: str


class Prediction(APIModel):
    """OpenAI's / Fireworks' Predicted Outputs: text the reply is expected to repeat (drafts to verify)."""

    type: Literal["content"]
    content: str | list[PredictionTextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class PromptLookup(APIModel):
    """ember's per-request n-gram prompt lookup (speculative decoding); null fields keep the server's value."""

    mode: Literal["off", "on", "auto"] | None = None
    num_speculative_tokens: Annotated[int, Field(ge=1, le=16)] | None = None
    min_ngram: Annotated[int, Field(ge=1, le=16)] | None = None
    max_ngram: Annotated[int, Field(ge=1, le=16)] | None = None


class SamplingRequest(APIModel):
    """The sampler, stopping and Fireworks fields common to /completions and /chat/completions."""

    model: str | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    min_tokens: NonNegativeInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: SeedInt | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[NonNegativeInt] | None = None
    ignore_eos: bool | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    context_length_exceeded_behavior: Literal["truncate", "error"] | None = None
    perf_metrics_in_response: bool | None = None
    prompt_cache_isolation_key: str | None = None
    skip_special_tokens: bool | None = None
    # {"type": "text" | "json_object" | "json_schema" | "grammar" | "regex" | "choice", ...}: checked by
    # ember.structured.spec_from_response_format, so it stays an untyped object here.
    response_format: Any = None
    prediction: Prediction | None = None
    prompt_lookup: PromptLookup | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def logit_bias_by_id(self, vocab_size: int) -> dict[int, float]:
        biases: dict[int, float] = {}
        for key, bias in (self.logit_bias or {}).items():
            try:
                token_id = int(key)
            except ValueError:
                raise invalid_request(
                    f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
                ) from None
            if not 0 <= token_id < vocab_size:
                raise invalid_request(
                    f"logit_bias token id {token_id} is outside the vocabulary [0, {vocab_size})",
                    param="logit_bias",
                )
            biases[token_id] = bias
        return biases


# -- reading a request body into a model ------------------------------------------------------------------

ModelT = TypeVar("ModelT", bound=BaseModel)


def param_path(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'role') -> 'messages[0].role', the way OpenAI names a nested parameter."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not path:
            path = part
        elif not part.startswith(("function-", "json-", "list[", "str", "int", "bool", "float", "dict[")):
            # pydantic adds union-member tags (`list[int]`, `str`) to the location; they are not parameters.
            path += f".{part}"
    return path


def validation_error(error: ValidationError) -> Exception:
    first = error.errors()[0]
    param = param_path(tuple(first["loc"]))
    message = first["msg"]
    if first["type"] == "missing":
        message = "is required"
    return invalid_request(f"{param}: {message}" if param else message, param=param or None)


def parse_json(raw: bytes) -> object:
    if not raw.strip():
        raise invalid_request("the request body is empty; send a JSON object")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise invalid_request(f"the request body is not valid UTF-8 (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise invalid_request(
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None


def validate_body(model: type[ModelT], payload: object) -> ModelT:
    if not isinstance(payload, dict):
        raise invalid_request(f"the request body must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise validation_error(error) from None


async def read_body(request: Request, model: type[ModelT]) -> ModelT:
    return validate_body(model, parse_json(await request.body()))


async def read_json_object(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object body (400 naming the problem otherwise); `allow_empty`: no body is {}."""
    raw = await request.body()
    if allow_empty and not raw.strip():
        return {}
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        raise invalid_request(f"the request body must be a JSON object, got {type(payload).__name__}")
    return payload
