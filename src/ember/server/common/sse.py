"""Server-sent events: OpenAI's `data:` lines ending with [DONE], and Anthropic's named events."""

from __future__ import annotations

import json
from typing import Any

DONE = "data: [DONE]\n\n"


def _json(payload: dict[str, Any]) -> str:
    # Compact and not ASCII-escaped: engine text is decoded with replacement characters, so it encodes as UTF-8.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def sse_data(payload: dict[str, Any]) -> str:
    return f"data: {_json(payload)}\n\n"


def sse_event(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {_json(payload)}\n\n"
