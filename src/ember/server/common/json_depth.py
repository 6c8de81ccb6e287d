"""How deep a request body may nest. Python's json parser and every recursive walk after it (pydantic, json.dumps
inside chat templates, the grammar measures) fail with RecursionError somewhere near 1000 levels, and a
RecursionError is a 500; no real body comes near the limit (a JSON schema may nest 100 levels)."""

from __future__ import annotations

from ember.server.common.errors import APIError, invalid_request
from ember.structured.limits import json_depth

MAX_BODY_DEPTH = 256


def too_deep(param: str | None = None) -> APIError:
    where = f"{param}: " if param else "the request body: "
    return invalid_request(f"{where}JSON nested more than {MAX_BODY_DEPTH} levels deep", param=param)


def check_body_depth(payload: object) -> None:
    """A 400 naming the top-level field whose value nests past MAX_BODY_DEPTH (the body itself is level 1)."""
    if isinstance(payload, dict):
        for key, value in payload.items():
            if json_depth(value, stop_above=MAX_BODY_DEPTH - 1) > MAX_BODY_DEPTH - 1:
                raise too_deep(key)
    elif json_depth(payload, stop_above=MAX_BODY_DEPTH) > MAX_BODY_DEPTH:
        raise too_deep()
