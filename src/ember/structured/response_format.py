"""The API's `response_format` object -> StructuredSpec (OpenAI and Fireworks spellings)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from ember.structured.grammar import grammar_for
from ember.structured.limits import check_json_depth
from ember.structured.spec import ReasoningSection, StructuredSpec

_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TYPES = ("text", "json_object", "json_schema", "grammar", "regex", "choice")


def spec_from_response_format(
    response_format: dict[str, Any] | None, reasoning: ReasoningSection | None = None
) -> StructuredSpec | None:
    """The constraint a `response_format` asks for; None for plain text.

    Accepted: {"type": "text"}; {"type": "json_object"} (Fireworks: optional "schema");
    {"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}} (Fireworks: "schema"
    next to "type" also works); {"type": "grammar", "grammar": GBNF or Lark}; {"type": "regex", "regex": ...};
    {"type": "choice", "choices": [...]}. ValueError names the field at fault (an API 400).
    With `reasoning` (a thinking model), the constraint applies after the reasoning section ends.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be an object")
    kind = response_format.get("type")
    if kind not in _TYPES:
        raise ValueError(f"response_format.type must be one of {', '.join(_TYPES)}, got {kind!r}")
    spec: StructuredSpec | None = None
    match kind:
        case "text":
            return None
        case "json_object":
            schema = response_format.get("schema")
            spec = _schema_spec(
                {"type": "object"} if schema is None else schema, "response_format.schema", False
            )
        case "json_schema":
            spec = _json_schema_spec(response_format)
        case "grammar":
            spec = StructuredSpec("gbnf", _text_field(response_format, "grammar"))
        case "regex":
            spec = StructuredSpec("regex", _text_field(response_format, "regex"))
        case "choice":
            choices = response_format.get("choices")
            if (
                not isinstance(choices, list)
                or not choices
                or not all(isinstance(c, str) and c for c in choices)
            ):
                raise ValueError("response_format.choices must be a non-empty list of non-empty strings")
            spec = StructuredSpec("choice", json.dumps(choices))
    assert spec is not None
    if reasoning is not None:
        spec = dataclasses.replace(spec, reasoning=reasoning)
    try:
        grammar_for(spec)
    except ValueError as error:
        raise ValueError(f"response_format: {error}") from None
    return spec


def response_format_message(error: ValueError) -> str:
    """A refusal of spec_from_response_format as the API reports it: always naming response_format."""
    message = str(error)
    return message if message.startswith("response_format") else f"response_format: {message}"


def _json_schema_spec(response_format: dict[str, Any]) -> StructuredSpec:
    wrapper = response_format.get("json_schema")
    if wrapper is None:
        if "schema" not in response_format:
            raise ValueError("response_format.json_schema is required for type json_schema")
        return _schema_spec(
            response_format["schema"], "response_format.schema", bool(response_format.get("strict"))
        )
    if not isinstance(wrapper, dict):
        raise ValueError("response_format.json_schema must be an object")
    name = wrapper.get("name")
    if name is not None and (not isinstance(name, str) or not _SCHEMA_NAME.match(name)):
        raise ValueError(
            "response_format.json_schema.name must be 1-64 letters, digits, underscores or dashes"
        )
    strict = wrapper.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ValueError("response_format.json_schema.strict must be a boolean")
    schema = wrapper.get("schema", {"type": "object"})
    return _schema_spec(schema, "response_format.json_schema.schema", bool(strict))


def _schema_spec(schema: Any, where: str, strict: bool) -> StructuredSpec:
    if not isinstance(schema, dict | bool):
        raise ValueError(f"{where} must be a JSON schema object")
    check_json_depth(schema, where)  # before json.dumps, which recurses
    return StructuredSpec("json_schema", json.dumps(schema), strict=strict)


def _text_field(response_format: dict[str, Any], field: str) -> str:
    value = response_format.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"response_format.{field} must be a non-empty string")
    return value
