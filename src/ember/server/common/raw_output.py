"""Fireworks' raw_output: what the model saw and wrote, before any parsing (completions, chat and messages)."""

from __future__ import annotations

import json
from typing import Any

from ember.structured.spec import StructuredSpec


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
