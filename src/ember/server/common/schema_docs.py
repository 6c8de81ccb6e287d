"""JSON schemas that document request fields the pydantic models keep loose (typed Any, checked by the chat plan
and the structured-output code with messages naming the field): /openapi.json shows their real shape, and the
fuzz run generates requests that reach that code. Documentation only: validation does not use them."""

from __future__ import annotations

from typing import Any

_OBJECT: dict[str, Any] = {"type": "object"}
_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_.-]{1,64}$"}


def _kind(name: str, fields: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"type": {"const": name}, **fields},
        "required": ["type", *required],
    }


RESPONSE_FORMAT: dict[str, Any] = {
    "description": "Constrains the output: JSON (with a schema), a GBNF or Lark grammar, a regex or a choice list",
    "anyOf": [
        _kind("text", {}),
        _kind("json_object", {"schema": _OBJECT}),
        _kind(
            "json_schema",
            {
                "json_schema": {
                    "type": "object",
                    "properties": {
                        "name": _NAME,
                        "description": {"type": "string"},
                        "schema": _OBJECT,
                        "strict": {"type": "boolean"},
                    },
                }
            },
            ("json_schema",),
        ),
        _kind("grammar", {"grammar": {"type": "string", "minLength": 1}}, ("grammar",)),
        _kind("regex", {"regex": {"type": "string", "minLength": 1}}, ("regex",)),
        _kind(
            "choice",
            {"choices": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}},
            ("choices",),
        ),
        {"type": "null"},
    ],
}

OPENAI_TOOLS: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "items": _kind(
                "function",
                {
                    "function": {
                        "type": "object",
                        "properties": {
                            "name": _NAME,
                            "description": {"type": "string"},
                            "parameters": _OBJECT,
                            "strict": {"type": "boolean"},
                        },
                        "required": ["name"],
                    }
                },
                ("function",),
            ),
        },
        {"type": "null"},
    ]
}

OPENAI_TOOL_CHOICE: dict[str, Any] = {
    "anyOf": [
        {"enum": ["auto", "none", "required"]},
        _kind(
            "function",
            {"function": {"type": "object", "properties": {"name": _NAME}, "required": ["name"]}},
            ("function",),
        ),
        {"type": "null"},
    ]
}

ANTHROPIC_TOOLS: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "type": {"const": "custom"},
                    "name": _NAME,
                    "description": {"type": "string"},
                    "input_schema": _OBJECT,
                },
                "required": ["name", "input_schema"],
            },
        },
        {"type": "null"},
    ]
}

ANTHROPIC_TOOL_CHOICE: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "type": {"enum": ["auto", "any", "tool", "none"]},
                "name": _NAME,
                "disable_parallel_tool_use": {"type": "boolean"},
            },
            "required": ["type"],
        },
        {"type": "null"},
    ]
}

ANTHROPIC_THINKING: dict[str, Any] = {
    "anyOf": [
        _kind("enabled", {"budget_tokens": {"type": "integer", "minimum": 1}}, ("budget_tokens",)),
        _kind("disabled", {}),
        {"type": "null"},
    ]
}

CHAT_CONTENT: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": _kind("text", {"text": {"type": "string"}}, ("text",))},
        {"type": "null"},
    ]
}
