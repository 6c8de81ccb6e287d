"""Fireworks' per-request performance numbers: `perf_metrics` in the body and fireworks-* response headers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RequestTimer:
    """Wall-clock marks of one API request, taken by the server (monotonic clock)."""

    start: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    end: float | None = None
    inter_token_gaps: list[float] = field(default_factory=list)

    def mark_tokens(self, count: int) -> None:
        """`count` new tokens arrived together (one engine step); the gap is shared among them."""
        if count <= 0:
            return
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
            count -= 1
        elif self.last_token is not None:
            self.inter_token_gaps.extend([(now - self.last_token) / count] * count)
            count = 0
        self.last_token = now

    def mark_end(self) -> None:
        self.end = time.monotonic()

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def processing_time(self) -> float:
        return (self.end if self.end is not None else time.monotonic()) - self.start


@dataclass(frozen=True)
class TokenCounts:
    prompt: int
    cached: int
    generated: int


def perf_metrics(counts: TokenCounts, timer: RequestTimer) -> dict[str, float | int]:
    """The body's `perf_metrics`, with Fireworks' hyphenated keys (times in seconds)."""
    total = timer.processing_time
    ttft = timer.time_to_first_token
    decode_time = total - ttft if ttft is not None else 0.0
    metrics: dict[str, float | int] = {
        "prompt-tokens": counts.prompt,
        "cached-prompt-tokens": counts.cached,
        "generated-tokens": counts.generated,
        "server-processing-time": round(total, 6),
        "tokens-per-second": round(counts.generated / total, 3) if total > 0 else 0.0,
        "generation-tokens-per-second": round((counts.generated - 1) / decode_time, 3)
        if counts.generated > 1 and decode_time > 0
        else 0.0,
    }
    if ttft is not None:
        metrics["server-time-to-first-token"] = round(ttft, 6)
    return metrics


def perf_headers(counts: TokenCounts, timer: RequestTimer) -> dict[str, str]:
    """Response headers of a non-streamed answer (a stream's headers go out before these are known)."""
    headers = {
        "fireworks-prompt-tokens": str(counts.prompt),
        "fireworks-cached-prompt-tokens": str(counts.cached),
        "fireworks-generated-tokens": str(counts.generated),
        "fireworks-server-processing-time": f"{timer.processing_time:.6f}",
    }
    if timer.time_to_first_token is not None:
        headers["fireworks-server-time-to-first-token"] = f"{timer.time_to_first_token:.6f}"
    return headers
