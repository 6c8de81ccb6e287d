"""From request fields to the engine's SamplingParams, including the context-length rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from ember.engine import generation_budget
from ember.engine.sampling_params import SamplingParams
from ember.engine.speculation.config import SpeculationParams
from ember.server.common.errors import APIError, invalid_request
from ember.server.common.protocol import SamplingRequest
from ember.structured import (
    ReasoningSection,
    StructuredSpec,
    response_format_message,
    spec_from_response_format,
)

CONTEXT_LENGTH_EXCEEDED = generation_budget.CONTEXT_LENGTH_EXCEEDED  # the embeddings route uses it too
T = TypeVar("T")


def resolve_max_tokens(
    prompt_len: int,
    requested: int | None,
    max_model_len: int,
    behavior: str = "truncate",
    prompt_param: str = "prompt",
) -> int:
    """The engine's generation budget (ember.engine.generation_budget, with Fireworks'
    context_length_exceeded_behavior); its refusal becomes a 400 naming the input at fault."""
    try:
        return generation_budget.resolve_max_tokens(prompt_len, requested, max_model_len, behavior)
    except generation_budget.GenerationBudgetError as error:
        param = prompt_param if error.param == "prompt" else error.param
        raise invalid_request(str(error), param=param, code=error.code) from None


@dataclass(frozen=True)
class SamplingLimits:
    """What the server allows beyond SamplingParams' own range checks."""

    vocab_size: int
    max_n: int
    defaults: SamplingParams = field(default_factory=SamplingParams)  # for values a request leaves out


# SamplingParams names the field first in each of its messages ("top_p must be in (0, 1]").
_PARAM_FIELDS = {f for f in SamplingParams.__dataclass_fields__}


def _params_error(error: ValueError) -> APIError:
    message = str(error)
    first_word = message.split(" ", 1)[0]
    return invalid_request(message, param=first_word if first_word in _PARAM_FIELDS else None)


def response_format_spec(
    response_format: Any, reasoning: ReasoningSection | None = None
) -> StructuredSpec | None:
    """The constraint of a request's `response_format` (after `reasoning`, for thinking models); a 400 naming
    response_format when the schema or grammar is invalid. Built on the request thread, before the engine."""
    try:
        return spec_from_response_format(response_format, reasoning)
    except ValueError as error:
        raise invalid_request(response_format_message(error), param="response_format") from None


def build_sampling_params(
    request: SamplingRequest,
    limits: SamplingLimits,
    *,
    max_tokens: int,
    best_of: int | None = None,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    structured: StructuredSpec | None = None,
    speculation: SpeculationParams | None = None,
) -> SamplingParams:
    """SamplingParams for one prompt of `request`; any out-of-range value becomes a 400 naming its parameter.

    The output is constrained by `structured` when given (chat builds it from tools and reasoning), else by the
    request's own `response_format`."""
    n = request.n if request.n is not None else 1
    for name, value in (("n", n), ("best_of", best_of)):
        if value is not None and value > limits.max_n:
            raise invalid_request(f"{name} must be at most {limits.max_n}, got {value}", param=name)
    for token_id in request.stop_token_ids or []:
        if token_id >= limits.vocab_size:
            raise invalid_request(
                f"stop_token_ids: {token_id} is outside the vocabulary", param="stop_token_ids"
            )
    if structured is None:
        structured = response_format_spec(request.response_format)
    defaults = limits.defaults
    try:
        return SamplingParams(
            n=n,
            best_of=best_of,
            max_tokens=max_tokens,
            min_tokens=min(request.min_tokens or 0, max_tokens),
            temperature=_or(request.temperature, defaults.temperature),
            top_p=_or(request.top_p, defaults.top_p),
            top_k=_or(request.top_k, defaults.top_k),
            min_p=_or(request.min_p, defaults.min_p),
            typical_p=_or(request.typical_p, defaults.typical_p),
            repetition_penalty=_or(request.repetition_penalty, defaults.repetition_penalty),
            presence_penalty=_or(request.presence_penalty, defaults.presence_penalty),
            frequency_penalty=_or(request.frequency_penalty, defaults.frequency_penalty),
            logit_bias=request.logit_bias_by_id(limits.vocab_size),
            seed=request.seed,
            stop=request.stop_list(),
            stop_token_ids=list(request.stop_token_ids or []),
            ignore_eos=bool(request.ignore_eos),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=_or(request.skip_special_tokens, True),
            structured=structured,
            speculation=speculation,
        )
    except ValueError as error:
        raise _params_error(error) from None


def _or(value: T | None, default: T) -> T:
    return default if value is None else value
