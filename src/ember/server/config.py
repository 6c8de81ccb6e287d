"""What the HTTP layer needs to know that the engine does not: names, keys and request limits."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the API server; the engine's own settings live in EngineConfig."""

    model_name: str
    """Short name of the served model, e.g. SmolLM2-135M-Instruct; its full id is accounts/<account>/models/<name>."""
    aliases: tuple[str, ...] = ()
    """More names clients may send as `model` (e.g. the OpenAI-style short alias they already use)."""
    account: str = "fireworks"
    """Account segment of model ids, as in Fireworks' accounts/fireworks/models/<name>."""
    api_keys: tuple[str, ...] = ()
    """Bearer keys accepted on /v1 routes; empty means the server is open (it says so at start-up)."""
    max_body_bytes: int = 8 * 2**20
    """Larger request bodies get a 413."""
    max_n: int = 16
    """Upper bound for n and best_of: each sample holds its own KV cache."""
    max_embedding_inputs: int = 256
    """Upper bound for the number of inputs of one embeddings request."""

    def __post_init__(self) -> None:
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"model_name must be a non-empty name without '/', got {self.model_name!r}")
        if not self.account or "/" in self.account:
            raise ValueError(f"account must be a non-empty name without '/', got {self.account!r}")
        if any(not key for key in self.api_keys):
            raise ValueError("api_keys must not contain empty keys")
        for name in ("max_body_bytes", "max_n", "max_embedding_inputs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def model_id(self) -> str:
        return f"accounts/{self.account}/models/{self.model_name}"
