"""What /v1/completions and /v1/chat/completions share about a body's fields beyond OpenAI's: the request's one
output constraint under any of its spellings, and vLLM's prompt_logprobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ember.engine.outputs import TokenLogprob
from ember.server.common.errors import invalid_request
from ember.server.openai.logprob_objects import finite
from ember.server.openai.protocol import GenerationRequest
from ember.structured.constraint_fields import (
    ConstraintFieldError,
    RequestedConstraint,
    check_constraint,
    requested_constraint,
)

if TYPE_CHECKING:
    from ember.models.tokenizer import Tokenizer


def output_constraint(body: GenerationRequest) -> RequestedConstraint | None:
    """The body's one output constraint (response_format, guided_*, structured_outputs, grammar, json_schema);
    a 400 naming the field for a malformed one, or naming both for two different ones."""
    try:
        return requested_constraint(body.constraint_fields())
    except ConstraintFieldError as error:
        raise invalid_request(str(error), param=error.param) from None


def as_response_format(body: GenerationRequest, constraint: RequestedConstraint | None) -> GenerationRequest:
    """The body with its constraint written as response_format, the one spelling the preparation reads."""
    if constraint is None or constraint.param == "response_format":
        return body
    return body.model_copy(update={"response_format": constraint.response_format})


def check_output_constraint(constraint: RequestedConstraint | None) -> None:
    """Compiles a constraint given under another name than response_format, so its refusal names that field
    (on the preparation thread: a grammar takes up to a second to check)."""
    if constraint is None or constraint.param == "response_format":
        return
    try:
        check_constraint(constraint)
    except ConstraintFieldError as error:
        raise invalid_request(str(error), param=error.param) from None


def refuse_streamed_prompt_logprobs(body: GenerationRequest) -> None:
    # vLLM refuses the same: a stream has no place for the prompt's scores before its first token.
    if body.stream and body.prompt_logprobs is not None:
        raise invalid_request("prompt_logprobs is not available when stream is true", param="prompt_logprobs")


def vllm_prompt_logprobs(
    tokenizer: Tokenizer, entries: list[TokenLogprob | None] | None, num_top: int
) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's prompt_logprobs: per prompt token (None for the first), {token id: {logprob, rank, decoded_token}}
    for the prompt's own token and the num_top most likely ones."""
    result: list[dict[str, dict[str, Any]] | None] = []
    for entry in entries or []:
        if entry is None:
            result.append(None)
            continue
        scores = {str(entry.token_id): _scored(tokenizer, entry.token_id, entry.logprob, entry.rank)}
        for rank, (token_id, logprob) in enumerate(entry.top[:num_top], start=1):
            scores.setdefault(str(token_id), _scored(tokenizer, token_id, logprob, rank))
        result.append(scores)
    return result


def _scored(tokenizer: Tokenizer, token_id: int, logprob: float, rank: int) -> dict[str, Any]:
    return {"logprob": finite(logprob), "rank": rank, "decoded_token": tokenizer.token_text(token_id)}
