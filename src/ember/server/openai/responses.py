"""Pieces shared by the completion and chat completion responses: the object envelope, usage, finish reasons,
and where a stream reports usage."""

from __future__ import annotations

import time
from typing import Any

from ember.server.common.protocol import StreamOptions


def now_seconds() -> int:
    return int(time.time())


def completion_object(
    kind: str,
    response_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """The envelope shared by completion and chat completion objects and their stream chunks."""
    return {
        "id": response_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def api_finish_reason(engine_reason: str | None) -> str | None:
    # "abort" only reaches a client that is already gone, or one whose server is shutting down.
    return {"abort": "stop"}.get(engine_reason or "", engine_reason)


class StreamUsage:
    """Where a stream reports usage.

    Fireworks (default): on the chunk carrying the last finish_reason. OpenAI, when the client sends
    stream_options: include_usage true gives `usage: null` on every chunk and a final `choices: []` chunk
    with the usage; include_usage false gives no usage at all.
    """

    def __init__(self, options: StreamOptions | None) -> None:
        self.openai_style = options is not None
        self.final_chunk = bool(options and options.include_usage)

    @property
    def on_finish_chunk(self) -> bool:
        return not self.openai_style
