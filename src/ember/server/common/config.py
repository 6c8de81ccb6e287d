"""What the HTTP layer needs to know that the engine does not: names, keys, browser and adapter access, and
request limits; and where fine-tuning keeps its state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ember.server.common.api_keys import ApiKey
from ember.server.common.browser_guard import origin_is_valid

DEFAULT_ACCOUNT = "fireworks"  # as in Fireworks' accounts/fireworks/models/<name>


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the API server; the engine's own settings live in EngineConfig."""

    model_name: str
    """Short name of the served model, e.g. SmolLM2-135M-Instruct; its full id is accounts/<account>/models/<name>."""
    aliases: tuple[str, ...] = ()
    """More names clients may send as `model` (e.g. the OpenAI-style short alias they already use)."""
    account: str = DEFAULT_ACCOUNT
    """Account segment of model ids, as in Fireworks' accounts/fireworks/models/<name>."""
    api_keys: tuple[str, ...] = ()
    """Bearer keys of the server's own account (--api-key, EMBER_API_KEYS): one tenant, as before tenancy."""
    tenant_keys: tuple[ApiKey, ...] = ()
    """Keys with their own accounts or admin rights (--api-keys-file, EMBER_ADMIN_API_KEYS). With neither kind
    of key the server is open: one tenant that sees everything (it says so at start-up)."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins CORS allows (`*`: any); a cross-origin request from any other origin is refused."""
    allowed_hosts: tuple[str, ...] = ()
    """Without API keys, Host names accepted besides localhost and IP addresses (the --host name, and
    --allowed-hosts); `*` turns the DNS-rebinding check off."""
    adapter_dirs: tuple[Path, ...] = ()
    """Folders POST /v1/adapters may load adapters from (--adapter-dir), besides the data directory."""
    max_body_bytes: int = 8 * 2**20
    """Larger request bodies get a 413."""
    max_n: int = 16
    """Upper bound for n and best_of: each sample holds its own KV cache."""
    max_embedding_inputs: int = 256
    """Upper bound for the number of inputs of one embeddings request."""
    max_embedding_tokens: int = 65_536
    """Upper bound for the tokens of all inputs of one embeddings request together (a 400 above it); OpenAI's is
    300,000, which on a CPU is ~10 minutes of prefill (docs/decisions.md)."""
    generic_tools: bool = True
    """Tools on a model whose chat template has no tool support use ember's generic format (a request's
    `generic_tools` overrides it); False: such requests get a 400 (`ember serve --no-generic-tools`)."""
    tool_call_threshold: float | None = None
    """Generic tool format under tool_choice auto: the reply opens a tool call when the model gives opening one
    at least this probability at the reply's first token (`ember serve --tool-call-threshold`; a request's
    `tool_call_threshold` overrides it). None: ember's measured default (chat/generic_tools.py)."""

    def __post_init__(self) -> None:
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"model_name must be a non-empty name without '/', got {self.model_name!r}")
        if self.tool_call_threshold is not None and not 0.0 <= self.tool_call_threshold <= 1.0:
            raise ValueError(f"tool_call_threshold must be between 0 and 1, got {self.tool_call_threshold}")
        if not self.account or "/" in self.account:
            raise ValueError(f"account must be a non-empty name without '/', got {self.account!r}")
        if any(not key for key in self.api_keys):
            raise ValueError("api_keys must not contain empty keys")
        bad_origins = [o for o in self.allowed_origins if not origin_is_valid(o)]
        if bad_origins:
            raise ValueError(
                f"allowed origins must be '*' or scheme://host[:port] (no path), got {', '.join(bad_origins)}"
            )
        for name in ("max_body_bytes", "max_n", "max_embedding_inputs", "max_embedding_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def model_id(self) -> str:
        return f"accounts/{self.account}/models/{self.model_name}"

    @property
    def has_keys(self) -> bool:
        return bool(self.api_keys or self.tenant_keys)


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
