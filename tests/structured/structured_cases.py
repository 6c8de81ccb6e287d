"""Cases for the structured-output tests: varied JSON schemas (nested objects, arrays, enums, required
fields, bounded numbers, anyOf, nullable, top-level arrays), each of bounded size so it can complete."""

from __future__ import annotations

import random
from typing import Any

_WORDS = ["alpha", "beta", "gamma", "delta", "red", "green", "blue", "north", "south", "small", "large", "ok"]
_KEYS = ["name", "title", "city", "label", "kind", "code", "owner", "status", "note", "tag"]


def _string(rng: random.Random) -> dict[str, Any]:
    return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 16)}


def _integer(rng: random.Random) -> dict[str, Any]:
    low = rng.randint(-50, 50)
    return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}


def _number(rng: random.Random) -> dict[str, Any]:
    low = rng.randint(-10, 10)
    return {"type": "number", "minimum": low, "maximum": low + rng.randint(1, 100)}


def _enum(rng: random.Random) -> dict[str, Any]:
    return {"enum": rng.sample(_WORDS, rng.randint(2, 5))}


def _scalar(rng: random.Random) -> dict[str, Any]:
    return rng.choice([_string, _integer, _number, _enum, lambda _: {"type": "boolean"}])(rng)


def _object(rng: random.Random, depth: int, max_keys: int = 4) -> dict[str, Any]:
    keys = rng.sample(_KEYS, rng.randint(1, max_keys))
    properties = {
        key: _object(rng, depth - 1, 2) if depth > 0 and rng.random() < 0.4 else _value(rng, depth - 1)
        for key in keys
    }
    required = [k for k in keys if rng.random() < 0.7] or keys[:1]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _array(rng: random.Random, depth: int) -> dict[str, Any]:
    items = _object(rng, 0, 2) if depth > 0 and rng.random() < 0.5 else _scalar(rng)
    low = rng.randint(0, 2)
    return {"type": "array", "items": items, "minItems": low, "maxItems": low + rng.randint(1, 3)}


def _value(rng: random.Random, depth: int) -> dict[str, Any]:
    roll = rng.random()
    if depth > 0 and roll < 0.2:
        return _array(rng, depth)
    if roll < 0.3:
        return {"anyOf": [_integer(rng), _enum(rng)]}
    if roll < 0.35:
        return {"type": ["string", "null"], "maxLength": 8}
    return _scalar(rng)


def varied_schemas(count: int, seed: int = 5) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    schemas: list[dict[str, Any]] = []
    for i in range(count):
        if i % 10 == 9:
            schemas.append(_array(rng, 1))  # a top-level array now and then
        else:
            schemas.append(_object(rng, depth=1 + i % 3))
    return schemas


def chat_prompt(user: str) -> str:
    """A ChatML prompt as SmolLM2's template renders one user turn."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
