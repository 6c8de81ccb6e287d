"""A tool's parameter schema with its objects closed: an object that lists `properties` and says nothing about
others gets `additionalProperties: false`, so a constrained call can only use the arguments the function declares.

JSON Schema allows undeclared properties by default, and a small model uses that room: under `required` the
default model wrote `{"city": "Tokyo", "description": ..., "parameters": {...}}` for get_weather(city) until
max_tokens ran out. vLLM's default grammar backend (xgrammar, strict mode) and OpenAI's strict function calling
both leave such properties out too. Objects whose schema speaks to other properties (additionalProperties,
patternProperties, unevaluatedProperties) or is composed with allOf (closing each part would forbid the others'
properties) are left as they are.
"""

from __future__ import annotations

from typing import Any

_OPEN_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf")
# Keywords whose value is one subschema / a list of them / a name -> subschema map (allOf deliberately absent).
_SUBSCHEMA = ("items", "additionalItems", "contains", "not", "if", "then", "else")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


def closed_objects(schema: Any) -> Any:
    """A copy of `schema` with every open object that declares properties closed (the input is not changed)."""
    if not isinstance(schema, dict):
        return schema
    closed = dict(schema)
    for key in _SUBSCHEMA:
        if key in closed:
            closed[key] = closed_objects(closed[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(closed.get(key), list):
            closed[key] = [closed_objects(item) for item in closed[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(closed.get(key), dict):
            closed[key] = {name: closed_objects(value) for name, value in closed[key].items()}
    if isinstance(closed.get("properties"), dict) and not any(key in closed for key in _OPEN_KEYS):
        closed["additionalProperties"] = False
    return closed
