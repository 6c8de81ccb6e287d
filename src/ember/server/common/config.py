"""What the HTTP layer needs to know that the engine does not: names, keys and request limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    max_embedding_tokens: int = 65_536
    """Upper bound for the tokens of all inputs of one embeddings request together (a 400 above it); OpenAI's is
    300,000, which on a CPU is ~10 minutes of prefill (docs/decisions.md)."""

    def __post_init__(self) -> None:
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"model_name must be a non-empty name without '/', got {self.model_name!r}")
        if not self.account or "/" in self.account:
            raise ValueError(f"account must be a non-empty name without '/', got {self.account!r}")
        if any(not key for key in self.api_keys):
            raise ValueError("api_keys must not contain empty keys")
        for name in ("max_body_bytes", "max_n", "max_embedding_inputs", "max_embedding_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def model_id(self) -> str:
        return f"accounts/{self.account}/models/{self.model_name}"


@dataclass(frozen=True)
class FineTuningConfig:
    """The files, datasets and fine-tuning API: where its state lives and what it trains on."""

    data_dir: Path
    """SQLite store, uploads, job checkpoints and finished adapters (`ember serve --data-dir`)."""
    base_model_path: str | None = None
    """GGUF file or HF folder the training worker loads the base model from; None: the file the engine loaded."""
    max_upload_bytes: int = 512 * 2**20
    """Larger uploads of training data get a 413 (the request body limit does not apply to uploads)."""
    worker_threads: int | None = None
    """torch threads of the training worker process; None: torch's default."""
    poll_interval_s: float = 0.5
    """How often the job runner looks at its queue and its worker."""

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be at least 1, got {self.max_upload_bytes}")
        if self.worker_threads is not None and self.worker_threads < 1:
            raise ValueError(f"worker_threads must be at least 1 when set, got {self.worker_threads}")
        if self.poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, got {self.poll_interval_s}")
