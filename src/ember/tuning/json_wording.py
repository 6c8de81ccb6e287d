"""How a validation problem names the JSON a user wrote: a value's JSON type and a short rendering of it."""

from __future__ import annotations

import json
from typing import Any


def shown_json(value: Any) -> str:
    """A value as the user wrote it in JSON (true, null, "x"), cut short."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages a user who wrote JSON understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
