"""The settings of one LoRA SFT run: the adapter's shape, and how the training loop runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ember.lora.targets import TARGET_MODULES, check_target_modules
from ember.tuning.hyperparameters import (
    ACTIVATION_CHECKPOINT_MIN_TOKENS,
    BASE_LEARNING_RATE,
    BASE_MATMUL_DTYPE,
    BATCH_TOKENS,
    DPO_BETA,
    LORA_ALPHA_PER_RANK,
    LORA_RANK,
    LOSS_CHUNK_TOKENS,
    MAX_CONTEXT_LENGTH,
    TARGET_EPOCHS,
)

LR_SCHEDULES = ("cosine", "linear", "constant")
BASE_MATMUL_DTYPES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class LoraSettings:
    """The trainable adapter: delta = (alpha / rank) * B @ A on each target projection of every layer."""

    rank: int = LORA_RANK
    alpha: float = LORA_RANK * LORA_ALPHA_PER_RANK
    dropout: float = 0.0  # on the adapter's input, during training only
    target_modules: tuple[str, ...] = TARGET_MODULES

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "target_modules", check_target_modules(self.target_modules))


@dataclass(frozen=True)
class DpoSettings:
    """What a DPO run adds to the loop: beta weighs the implicit reward (log-ratio to the reference);
    `reference_batch_pairs` pairs per reference forward (None: as many as fill the token budget)."""

    beta: float = DPO_BETA
    reference_batch_pairs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a positive number, got {self.beta}")
        if self.reference_batch_pairs is not None and self.reference_batch_pairs < 1:
            raise ValueError(
                f"reference_batch_pairs must be at least 1 when set, got {self.reference_batch_pairs}"
            )


@dataclass(frozen=True)
class TrainerConfig:
    """The training loop. One optimizer step takes `batch_examples` examples (OpenAI's batch_size), or without
    it as many as fill `batch_tokens`, times `grad_accumulation`; the examples of a step are packed into
    micro-batches of <= `batch_tokens` tokens, so memory does not grow with the batch size."""

    epochs: int = TARGET_EPOCHS
    learning_rate: float = BASE_LEARNING_RATE
    warmup_steps: int = 0  # linear warmup from 0 to learning_rate
    lr_schedule: str = "cosine"  # decay after warmup, down to min_lr_ratio * learning_rate at the last step
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping
    batch_tokens: int = BATCH_TOKENS  # input tokens per packed micro-batch
    batch_examples: int | None = None  # examples per step (OpenAI's batch_size); None: fill batch_tokens
    grad_accumulation: int = 1
    max_context_length: int = MAX_CONTEXT_LENGTH  # longer examples are dropped (see batching.py)
    seed: int = 42
    eval_fraction: float = 0.1  # carved out of the training data when no evaluation dataset is given
    min_eval_carve_out_examples: int = 10  # below this many examples nothing is carved out
    eval_every_steps: int | None = None  # a validation batch every N steps; None: about 20 in a run
    early_stop: bool = False  # stop once the validation loss stops improving
    early_stop_patience: int = 1  # evaluations without improvement before stopping
    checkpoint_every_steps: int | None = None  # besides the checkpoint at the end of every epoch
    loss_chunk_tokens: int = LOSS_CHUNK_TOKENS  # trained positions whose [n, vocab] logits exist at once
    # micro-batches of at least this many tokens keep only each layer's input and recompute the layer in
    # backward; None: never. Smaller ones keep everything: little memory, and recomputing costs ~30% of a step
    activation_checkpoint_min_tokens: int | None = ACTIVATION_CHECKPOINT_MIN_TOKENS
    # the frozen base projections' matmuls: fp32 (exact), bf16, or auto (bf16 where the CPU has native bf16);
    # the LoRA path, norms, attention, residual stream and loss are fp32 in every case
    base_matmul_dtype: str = BASE_MATMUL_DTYPE

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_tokens": self.batch_tokens,
            "grad_accumulation": self.grad_accumulation,
            "early_stop_patience": self.early_stop_patience,
            "loss_chunk_tokens": self.loss_chunk_tokens,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name in ("batch_examples", "eval_every_steps", "checkpoint_every_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 when set, got {value}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must not be negative, got {self.warmup_steps}")
        if self.base_matmul_dtype not in BASE_MATMUL_DTYPES:
            raise ValueError(
                f"base_matmul_dtype must be one of {', '.join(BASE_MATMUL_DTYPES)}, got {self.base_matmul_dtype!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive when set, got {self.max_grad_norm}")
        if self.max_context_length < 2:
            raise ValueError(f"max_context_length must be at least 2, got {self.max_context_length}")
        if self.batch_tokens < self.max_context_length - 1:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must hold one example of max_context_length "
                f"({self.max_context_length}) tokens"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.min_eval_carve_out_examples < 2:
            raise ValueError(
                f"min_eval_carve_out_examples must be at least 2, got {self.min_eval_carve_out_examples}"
            )

    def learning_rate_at(self, step: int, total_steps: int) -> float:
        """The rate of optimizer step `step` (0-based): linear warmup, then cosine / linear decay reaching
        min_lr_ratio * learning_rate at the last step. A pure function, so a resumed run follows the same curve."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.learning_rate
        decay_steps = max(total_steps - self.warmup_steps - 1, 1)
        done = min((step - self.warmup_steps) / decay_steps, 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * done)) if self.lr_schedule == "cosine" else 1 - done
        return self.learning_rate * (self.min_lr_ratio + (1 - self.min_lr_ratio) * shape)
