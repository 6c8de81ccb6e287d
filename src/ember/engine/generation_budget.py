"""How many tokens a request may generate: its prompt length, its max_tokens and the model's context length,
with Fireworks' context_length_exceeded_behavior. The one place this is decided (the engine at admission, the
scheduler's own guard and the API all call it); the API only turns its error into an HTTP 400."""

from __future__ import annotations

from typing import Literal

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
BEHAVIORS = ("truncate", "error")


class GenerationBudgetError(ValueError):
    """The request has no valid budget: `param` names the input at fault; `code` is "context_length_exceeded"
    when the prompt, or the prompt plus max_tokens, does not fit the context (else None)."""

    def __init__(self, message: str, param: Literal["prompt", "max_tokens"], code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def resolve_max_tokens(
    prompt_len: int, requested: int | None, max_model_len: int, behavior: str = "truncate"
) -> int:
    """The most tokens to generate: `requested`, or the context left after the prompt when it is None.

    A prompt must leave room for one generated token, whatever the behavior. A `requested` beyond the room is
    cut to it under "truncate" (ember's and Fireworks' default) and refused under "error".
    """
    if behavior not in BEHAVIORS:
        raise ValueError(f"context_length_exceeded_behavior must be one of {BEHAVIORS}, got {behavior!r}")
    if prompt_len < 1:
        raise GenerationBudgetError("the prompt is empty; at least one token is needed", param="prompt")
    if requested is not None and requested < 1:
        raise GenerationBudgetError(f"max_tokens must be at least 1, got {requested}", param="max_tokens")
    room = max_model_len - prompt_len
    if room < 1:
        relation = "more than" if room < 0 else "as many as"
        raise GenerationBudgetError(
            f"the prompt has {prompt_len} tokens, {relation} max_model_len {max_model_len} (this model's "
            "context length), which leaves no room to generate; shorten the prompt",
            param="prompt",
            code=CONTEXT_LENGTH_EXCEEDED,
        )
    if requested is None:
        return room
    if requested > room and behavior == "error":
        raise GenerationBudgetError(
            f"the prompt ({prompt_len} tokens) plus max_tokens ({requested}) exceeds max_model_len "
            f"{max_model_len} (this model's context length, {prompt_len + requested} tokens asked for); lower "
            'max_tokens or send context_length_exceeded_behavior="truncate"',
            param="max_tokens",
            code=CONTEXT_LENGTH_EXCEEDED,
        )
    return min(requested, room)
