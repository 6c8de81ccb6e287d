"""Fireworks' `readMask` query parameter (Google's FieldMask): which fields of a resource a GET returns.

A mask is a comma-separated list of field paths in the JSON (camelCase) spelling, dots for nested fields;
empty or `*` means every field. A path naming no field of the resource is a 400 naming `readMask`, as Google's
APIs answer INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import Any

from ember.server.common.errors import APIError


def apply_read_mask(
    resource: dict[str, Any], mask: str | None, known: frozenset[str] | None = None
) -> dict[str, Any]:
    """The fields of `resource` the mask names. `known`: the top-level fields the resource type has (those
    left out of this instance because they are unset are still valid in a mask)."""
    if mask is None or mask.strip() in ("", "*", "**"):
        return resource
    paths = [path.strip() for path in mask.split(",") if path.strip()]
    fields = known if known is not None else frozenset(resource)
    masked: dict[str, Any] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in fields and head not in resource:
            raise APIError(400, f"readMask names the unknown field {head!r}", param="readMask")
        if head not in resource:
            continue
        value = resource[head]
        if rest and isinstance(value, dict):
            existing = masked.get(head)
            part = _nested(value, rest)
            masked[head] = {**existing, **part} if isinstance(existing, dict) else part
        else:
            masked[head] = value
    return masked


def _nested(value: dict[str, Any], path: str) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    if head not in value:
        return {}
    inner = value[head]
    return {head: _nested(inner, rest) if rest and isinstance(inner, dict) else inner}
