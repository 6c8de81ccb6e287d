"""A request for a new fine-tuning job, as both APIs and the CLI describe it, and the trainer settings it
resolves to: "auto" epochs, batch size and learning rate from the training dataset's size (hyperparameters.py),
every other missing value from ember's defaults."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ember.tuning.hyperparameters import (
    BATCH_TOKENS,
    LORA_ALPHA_PER_RANK,
    LORA_RANK,
    MAX_CONTEXT_LENGTH,
    ResolvedHyperparameters,
    resolve_hyperparameters,
)
from ember.tuning.trainer_config import DpoSettings, LoraSettings, TrainerConfig

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
    batch_size: int | None = (
        None  # examples per optimizer step (OpenAI batch_size, Fireworks batchSizeSamples)
    )
    batch_tokens: int | None = None  # tokens per packed micro-batch (Fireworks batchSize)
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
    weight_decay: float = 0.0
    job_id: str | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)  # e.g. the Fireworks fields
    method: str = "supervised"  # or "dpo": preference pairs, beta below
    beta: float | None = None  # DPO only; None: "auto" (DPO_BETA)
    reference_batch_pairs: int | None = None  # DPO only (Fireworks' refCacheBatchSize)


@dataclass(frozen=True)
class JobSettings:
    """What a request resolves to: the numbers OpenAI shows, the trainer's loop and the adapter's shape."""

    hyperparameters: ResolvedHyperparameters
    trainer: TrainerConfig
    lora: LoraSettings
    dpo: DpoSettings | None  # for a DPO job


def resolve_settings(request: JobRequest, n_examples: int) -> JobSettings:
    """The settings of a request whose training file has `n_examples` rows; "auto" resolved from that count."""
    # `is None`, not `or`: an explicit 0 is an invalid value to report, not "auto"
    max_context = _or_default(request.max_context_length, MAX_CONTEXT_LENGTH)
    rank = _or_default(request.lora_rank, LORA_RANK)
    try:
        resolved = resolve_hyperparameters(
            n_examples,
            n_epochs=request.n_epochs,
            batch_size=request.batch_size,
            learning_rate_multiplier=request.learning_rate_multiplier,
            learning_rate=request.learning_rate,
            dpo=request.method == "dpo",
            beta=request.beta,
        )
        trainer = TrainerConfig(
            epochs=resolved.n_epochs,
            learning_rate=resolved.learning_rate,
            warmup_steps=request.warmup_steps,
            weight_decay=request.weight_decay,
            batch_tokens=_or_default(request.batch_tokens, max(BATCH_TOKENS, max_context)),
            batch_examples=resolved.batch_size,
            grad_accumulation=request.grad_accumulation,
            max_context_length=max_context,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            early_stop=request.early_stop,
        )
        lora = LoraSettings(
            rank=rank,
            alpha=_or_default(request.lora_alpha, LORA_ALPHA_PER_RANK * rank),
            dropout=request.lora_dropout,
            target_modules=request.target_modules or LoraSettings().target_modules,
        )
        dpo = None
        if resolved.beta is not None:
            dpo = DpoSettings(beta=resolved.beta, reference_batch_pairs=request.reference_batch_pairs)
    except ValueError as error:
        raise JobRequestError(f"invalid hyperparameters: {error}", "hyperparameters") from error
    return JobSettings(resolved, trainer, lora, dpo)


def _or_default(value: T | None, default: T) -> T:
    return default if value is None else value
