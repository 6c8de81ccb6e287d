"""Request bodies: the pydantic base every body model uses, the sampling fields of completions and chat
completions (OpenAI names, Fireworks and vLLM extras; Anthropic's Messages maps onto them too), and reading a
JSON body into a model, with OpenAI-style 400s that name the bad parameter."""

from __future__ import annotations

import asyncio
import json
import time
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from ember.engine.sampling_params import (
    MAX_ABS_LOGIT_BIAS,
    MAX_ABS_PENALTY,
    MAX_REPETITION_PENALTY,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
)
from ember.server.common.errors import invalid_request
from ember.server.common.json_depth import MAX_BODY_DEPTH, check_body_depth, too_deep
from ember.server.common.json_pieces import loads_in_pieces
from ember.server.common.schema_docs import RESPONSE_FORMAT

# Every optional field accepts null; unknown fields are ignored, as OpenAI-compatible servers do.
NonNegativeInt = Annotated[int, Field(ge=0)]
SeedInt = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
Temperature = Annotated[float, Field(ge=0.0, le=MAX_TEMPERATURE)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonZeroProbability = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-MAX_ABS_PENALTY, le=MAX_ABS_PENALTY)]
RepetitionPenalty = Annotated[float, Field(ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)]
LogitBias = Annotated[float, Field(ge=-MAX_ABS_LOGIT_BIAS, le=MAX_ABS_LOGIT_BIAS)]
OFF_LOOP_PARSE_BYTES = 64 * 1024  # bodies above this are parsed and validated in a worker thread
# A list of objects longer than this (100k chat messages) is validated a slice at a time (see _validate_long_lists).
LONG_LIST_ITEMS = 1024


class APIModel(BaseModel):
    # NaN and infinity are never a valid value of any field: a number that overflows a float (1e400) too.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)


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
    temperature: Temperature | None = None
    top_p: NonZeroProbability | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Probability | None = None
    typical_p: NonZeroProbability | None = None
    repetition_penalty: RepetitionPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, LogitBias] | None = None
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
    response_format: Annotated[Any, WithJsonSchema(RESPONSE_FORMAT)] = None
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
T = TypeVar("T")


# Names pydantic gives the members of a union in an error's location; they are not parameters.
_UNION_MEMBER_NAMES = frozenset({"int", "float", "str", "bool", "bytes", "none", "list", "dict"})


def param_path(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'role') -> 'messages[0].role', the way OpenAI names a nested parameter."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part in _UNION_MEMBER_NAMES or part.startswith(("function-", "json-")):
            continue  # a union member's tag: `list[int]`, `literal['auto']`, `function-after[...]`, `str`
        elif not path:
            path = part
        else:
            path += f".{part}"
    return path


def validation_error(error: ValidationError, loc_prefix: tuple[int | str, ...] = ()) -> Exception:
    """The first invalid parameter as a 400; a value that fits no member of a union lists why for each.
    `loc_prefix`: where the validated value sits in the body (an item validated on its own)."""
    errors = error.errors()
    param = param_path((*loc_prefix, *errors[0]["loc"]))
    messages: list[str] = []
    for detail in errors:
        message = "is required" if detail["type"] == "missing" else detail["msg"]
        if param_path((*loc_prefix, *detail["loc"])) == param and message not in messages:
            messages.append(message)
    message = ", or ".join(messages)
    return invalid_request(f"{param}: {message}" if param else message, param=param or None)


def _reject_constant(name: str) -> float:
    # Python's json reads NaN, Infinity and -Infinity, which JSON does not have.
    raise ValueError(f"{name} is not a JSON value")


def parse_json(raw: bytes) -> object:
    """The body's JSON value; a 400 naming the problem when it is not JSON or nests past MAX_BODY_DEPTH
    (checked here, before pydantic or anything recursive walks it)."""
    if not raw.strip():
        raise invalid_request("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
        if len(raw) > OFF_LOOP_PARSE_BYTES:  # read in a worker thread: let the event loop in between pieces
            payload = loads_in_pieces(text, parse_constant=_reject_constant)
        else:
            payload = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as error:
        raise invalid_request(f"the request body is not valid UTF-8 (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise invalid_request(
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except ValueError as error:
        raise invalid_request(f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        raise too_deep() from None
    if raw.count(b"[") + raw.count(b"{") > MAX_BODY_DEPTH:  # a body cannot nest deeper than its brackets
        check_body_depth(payload)
    return payload


def json_object(payload: object) -> dict[str, Any]:
    """`payload` (from parse_json, so its depth is checked) if it is a JSON object, else a 400."""
    if not isinstance(payload, dict):
        raise invalid_request(f"the request body must be a JSON object, got {type(payload).__name__}")
    return payload


def validate_body(model: type[ModelT], payload: object) -> ModelT:
    """`payload` (from parse_json) as `model`."""
    body = _validate_long_lists(model, json_object(payload))
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise validation_error(error) from None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    """M for a field typed `list[M]` (maybe Annotated, maybe `| None`) where M is a body model, else None."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    members = [a for a in typing.get_args(annotation) if a is not type(None)] if _is_union(annotation) else []
    if len(members) == 1:
        annotation = members[0]
    if typing.get_origin(annotation) is not list:
        return None
    (item,) = typing.get_args(annotation) or (None,)
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _validate_long_lists(model: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    """`body` with each long list of body models (chat messages) validated here, an item at a time.

    pydantic-core validates a whole body in one native call that keeps the GIL: 100k messages held it for over
    half a second, and the event loop, on another thread, could not answer anyone meanwhile. Item by item, with
    a pause every LONG_LIST_ITEMS, the loop gets its turns; the model then takes the validated items as they
    are (pydantic does not validate a model instance again)."""
    replaced: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        items = body.get(key)
        if not isinstance(items, list) or len(items) <= LONG_LIST_ITEMS:
            continue
        item_model = _list_item_model(field.annotation)
        if item_model is None:
            continue
        validated = []
        for index, item in enumerate(items):
            if index % LONG_LIST_ITEMS == 0:
                time.sleep(0)  # lets go of the GIL: a thread waiting for it (the event loop) runs now
            try:
                validated.append(item_model.model_validate(item))
            except ValidationError as error:
                raise validation_error(error, (key, index)) from None
        replaced[key] = validated
    return {**body, **replaced} if replaced else body


async def _off_loop_if_big(raw: bytes, read: Callable[[bytes], T]) -> T:
    # Parsing and validating a few MiB holds the event loop for tens of milliseconds, and every stream's next
    # token waits behind it: big bodies are read in a worker thread.
    if len(raw) > OFF_LOOP_PARSE_BYTES:
        return await asyncio.to_thread(read, raw)
    return read(raw)


async def read_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request's JSON body as `model`; a 400 naming the bad parameter otherwise."""
    return await _off_loop_if_big(await request.body(), lambda raw: validate_body(model, parse_json(raw)))


async def read_json_object(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object body (400 naming the problem otherwise); `allow_empty`: no body is {}."""
    raw = await request.body()
    if allow_empty and not raw.strip():
        return {}
    return await _off_loop_if_big(raw, lambda raw: json_object(parse_json(raw)))
