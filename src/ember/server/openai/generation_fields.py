"""What /v1/completions and /v1/chat/completions share about a body's fields beyond OpenAI's: the request's one
output constraint under any of its spellings, vLLM's prompt_logprobs and token ids, and Fireworks' raw_output."""

from __future__ import annotations

import json
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
    from ember.structured.spec import StructuredSpec


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


def raw_output(
    prompt_fragments: list[str | int],
    prompt_token_ids: list[int],
    completion: str,
    completion_token_ids: list[int],
    structured: StructuredSpec | None,
    completion_logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fireworks' raw_output: the prompt as the model saw it and the completion before any parsing (tool calls,
    reasoning), with the constraint it ran under as a grammar."""
    raw: dict[str, Any] = {
        "prompt_fragments": prompt_fragments,
        "prompt_token_ids": list(prompt_token_ids),
        "completion": completion,
        "completion_token_ids": list(completion_token_ids),
        "completion_logprobs": completion_logprobs,
    }
    if structured is not None:
        raw["grammar"] = grammar_text(structured)
    return raw


def grammar_text(spec: StructuredSpec) -> str:
    """The constraint as one Lark grammar text (llguidance's dialect, in which `%json` embeds a schema)."""
    match spec.kind:
        case "gbnf" | "lark":
            return spec.source
        case "json_schema":
            return f"start: %json {spec.source}"
        case "regex":
            return f"start: /{spec.source.replace('/', chr(92) + '/')}/"
    return "start: " + " | ".join(json.dumps(choice) for choice in json.loads(spec.source))
