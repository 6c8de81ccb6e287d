"""A request for a new fine-tuning job, as both APIs and the CLI describe it, and the trainer settings it
resolves to (every "auto" or missing value replaced by ember's default)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ember.tuning.trainer_config import LoraSettings, TrainerConfig

DEFAULT_EPOCHS = 3  # OpenAI's n_epochs "auto" on small datasets
DEFAULT_LEARNING_RATE = 2e-4  # LoRA; learning_rate_multiplier scales it
DEFAULT_MAX_CONTEXT_LENGTH = 2048
DEFAULT_BATCH_TOKENS = 4096
DEFAULT_LORA_RANK = 8
T = TypeVar("T")


class JobRequestError(ValueError):
    """An invalid create request; `param` names the field at fault (HTTP 400)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class JobRequest:
    """A new job. None means "auto" / the default; OpenAI and Fireworks requests both map onto this."""

    model: str
    training_file: str  # an OpenAI file id or a Fireworks dataset name (accounts/<a>/datasets/<id>)
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    n_epochs: int | None = None
    batch_size: int | None = None  # examples per batch (OpenAI)
    batch_tokens: int | None = None  # tokens per batch (Fireworks batchSize)
    learning_rate_multiplier: float | None = None
    learning_rate: float | None = None  # absolute; wins over the multiplier (Fireworks learningRate)
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    max_context_length: int | None = None
    early_stop: bool = False
    warmup_steps: int = 0
    grad_accumulation: int = 1
    job_id: str | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)  # e.g. the Fireworks fields


def resolve_settings(request: JobRequest) -> tuple[TrainerConfig, LoraSettings]:
    """The trainer and LoRA settings of a request, with defaults for everything left "auto"."""
    # `is None`, not `or`: an explicit 0 is an invalid value to report, not "auto"
    max_context = _or_default(request.max_context_length, DEFAULT_MAX_CONTEXT_LENGTH)
    learning_rate = request.learning_rate
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATE * (request.learning_rate_multiplier or 1.0)
    rank = _or_default(request.lora_rank, DEFAULT_LORA_RANK)
    try:
        trainer = TrainerConfig(
            epochs=_or_default(request.n_epochs, DEFAULT_EPOCHS),
            learning_rate=learning_rate,
            warmup_steps=request.warmup_steps,
            batch_tokens=_or_default(request.batch_tokens, max(DEFAULT_BATCH_TOKENS, max_context)),
            batch_examples=request.batch_size,
            grad_accumulation=request.grad_accumulation,
            max_context_length=max_context,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            early_stop=request.early_stop,
        )
        lora = LoraSettings(
            rank=rank,
            alpha=_or_default(request.lora_alpha, 2.0 * rank),
            dropout=request.lora_dropout,
            target_modules=request.target_modules or LoraSettings().target_modules,
        )
    except ValueError as error:
        raise JobRequestError(f"invalid hyperparameters: {error}", "hyperparameters") from error
    return trainer, lora


def _or_default(value: T | None, default: T) -> T:
    return default if value is None else value
