"""What every serving module shares: the engine and the server-side objects built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from ember.server.config import ServerConfig
from ember.server.metrics import ServerMetrics
from ember.server.prompts import PromptEncoder
from ember.server.sampling import SamplingLimits
from ember.server.served_models import ServedModels

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

CACHE_ISOLATION_HEADER = "x-prompt-cache-isolation-key"


@dataclass(frozen=True)
class ServingState:
    engine: AsyncEngine
    config: ServerConfig
    models: ServedModels
    encoder: PromptEncoder
    metrics: ServerMetrics

    @property
    def limits(self) -> SamplingLimits:
        return SamplingLimits(
            vocab_size=self.engine.model_config.vocab_size,
            max_n=self.config.max_n,
            defaults=self.engine.default_params,  # the checkpoint's generation defaults
        )

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len


def response_request_id(http: Request, generated: str) -> str:
    """x-request-id: the client's own, when it sent one, so it can correlate; ours otherwise."""
    return http.headers.get("x-request-id") or generated


def cache_salt(http: Request, body_key: str | None) -> str | None:
    """prompt_cache_isolation_key from the body, else its header: tenants with different keys never share KV."""
    return body_key if body_key is not None else http.headers.get(CACHE_ISOLATION_HEADER)
