"""How deep a request body may nest. Python's json parser and every recursive walk after it (pydantic, json.dumps
inside chat templates, the grammar measures) fail with RecursionError somewhere near 1000 levels, and a
RecursionError is a 500; no real body comes near the limit (a JSON schema may nest 100 levels)."""

from __future__ import annotations

from ember.server.common.errors import APIError, invalid_request

MAX_BODY_DEPTH = 256


def nesting_depth(value: object, stop_above: int) -> int:
    """Levels of nested objects and arrays in a parsed JSON value (a scalar is 0), measured without recursion;
    counting stops as soon as the depth passes `stop_above`."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > stop_above:
                return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def too_deep(param: str | None = None) -> APIError:
    where = f"{param}: " if param else "the request body: "
    return invalid_request(f"{where}JSON nested more than {MAX_BODY_DEPTH} levels deep", param=param)


def check_body_depth(payload: object) -> None:
    """A 400 naming the top-level field whose value nests past MAX_BODY_DEPTH (the body itself is level 1)."""
    if isinstance(payload, dict):
        for key, value in payload.items():
            if nesting_depth(value, MAX_BODY_DEPTH - 1) > MAX_BODY_DEPTH - 1:
                raise too_deep(key)
    elif nesting_depth(payload, MAX_BODY_DEPTH) > MAX_BODY_DEPTH:
        raise too_deep()
