"""Errors the engine raises to its callers; the API layer maps each to an HTTP status."""

from __future__ import annotations


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; the caller should retry later (HTTP 429 with Retry-After)."""

    def __init__(self, num_waiting: int, retry_after_s: float = 1.0) -> None:
        super().__init__(f"the server is at capacity ({num_waiting} requests waiting); retry later")
        self.num_waiting = num_waiting
        self.retry_after_s = retry_after_s


class EngineDeadError(RuntimeError):
    """The engine's step loop stopped after an internal failure; no request can be served."""


class EngineStepError(RuntimeError):
    """An engine step failed for a reason that is not the request's fault (HTTP 500); the engine keeps serving."""


class ServerShuttingDownError(EngineDeadError):
    """The server is shutting down and ended this request (HTTP 503): it was still running when the drain
    timeout ran out, or it arrived after that."""
