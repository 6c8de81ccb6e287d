"""Server-sent events: OpenAI's `data:` lines ending with [DONE], Anthropic's named events, and the streaming
response that carries them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

DONE = "data: [DONE]\n\n"


def _json(payload: dict[str, Any]) -> str:
    # Compact and not ASCII-escaped: engine text is decoded with replacement characters, so it encodes as UTF-8.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def sse_data(payload: dict[str, Any]) -> str:
    return f"data: {_json(payload)}\n\n"


def sse_event(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {_json(payload)}\n\n"


def event_stream(body: AsyncIterator[str], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )
