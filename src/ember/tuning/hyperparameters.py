"""Every default of a fine-tuning job, and how "auto" hyperparameters resolve from the training dataset.

The rule follows what OpenAI documents for its fine-tuning API (docs/decisions.md, "Auto hyperparameters"):
- n_epochs: 3, raised so that a small dataset is seen at least 100 times in all (at most 25 epochs) and lowered
  so that a large one is seen at most 25,000 times (at least 1 epoch);
- batch_size: ~0.2% of the training examples, at least 1 and at most 256;
- learning_rate_multiplier: 1, multiplying ember's base LoRA learning rate (2e-4).
Fireworks jobs get the same rule for the fields they leave out (epochs, learningRate, batchSizeSamples); their
batchSize is a token budget per packed micro-batch and never changes what a step learns.

The number of examples is the number of rows of the training file, as OpenAI counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_LEARNING_RATE = 2e-4  # LoRA (rank 8, alpha 16) with AdamW; learning_rate_multiplier scales it
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100  # examples seen over all epochs, at least ...
MAX_TARGET_EXAMPLES = 25_000  # ... and at most, when the epoch count is "auto"
MIN_AUTO_EPOCHS = 1
MAX_AUTO_EPOCHS = 25
AUTO_BATCH_FRACTION = 0.002  # of the training examples
MAX_AUTO_BATCH_SIZE = 256

LORA_RANK = 8
LORA_ALPHA_PER_RANK = 2.0  # alpha = 2 * rank
MAX_CONTEXT_LENGTH = 2048
BATCH_TOKENS = 4096  # tokens of one packed micro-batch: bounds the memory of a step, not what it learns
ACTIVATION_CHECKPOINT_MIN_TOKENS = 1024  # micro-batches from this size recompute each layer in backward
LOSS_CHUNK_TOKENS = 512  # trained positions whose vocabulary logits exist at one time
# the frozen base projections' matmuls: bf16 where the CPU has native bf16 (~4x fp32 there), else fp32
BASE_MATMUL_DTYPE = "auto"
LOW_TOKEN_ACCURACY = 0.5  # a job ending below this mean training token accuracy gets a warning event

# DPO (docs/decisions.md, "#13 DPO"): beta 0.1 as the DPO paper, TRL and Together default to; the LoRA base
# learning rate a quarter of SFT's, as preference tuning moves a model that already answers well and a large
# step makes both replies' log-probabilities collapse together.
DPO_BETA = 0.1
DPO_BASE_LEARNING_RATE = 5e-5
LOW_REWARD_ACCURACY = 0.5  # a DPO job ending below this training reward accuracy gets a warning event


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """The numbers a job trains with; what OpenAI's `hyperparameters` shows once known."""

    n_epochs: int
    batch_size: int  # examples per optimizer step (a DPO example is a pair)
    learning_rate_multiplier: float
    learning_rate: float  # base_learning_rate * learning_rate_multiplier
    base_learning_rate: float = BASE_LEARNING_RATE
    beta: float | None = None  # DPO jobs only

    def as_openai(self) -> dict[str, int | float]:
        shown: dict[str, int | float] = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if self.beta is not None:
            shown["beta"] = self.beta
        return shown

    def describe(self) -> str:
        text = (
            f"n_epochs={self.n_epochs}, batch_size={self.batch_size}, "
            f"learning_rate_multiplier={self.learning_rate_multiplier:g} "
            f"(learning rate {self.learning_rate:g} = {self.base_learning_rate:g} x multiplier)"
        )
        return text if self.beta is None else f"{text}, beta={self.beta:g}"


def auto_epochs(n_examples: int) -> int:
    if n_examples < 1:
        raise ValueError(f"a training dataset needs at least 1 example, got {n_examples}")
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_AUTO_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    return max(1, min(MAX_AUTO_BATCH_SIZE, round(AUTO_BATCH_FRACTION * n_examples)))


def resolve_hyperparameters(
    n_examples: int,
    *,
    n_epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate_multiplier: float | None = None,
    learning_rate: float | None = None,
    dpo: bool = False,
    beta: float | None = None,
) -> ResolvedHyperparameters:
    """None means "auto". An absolute `learning_rate` (Fireworks) wins over the multiplier. A DPO job (`dpo`)
    multiplies DPO's base learning rate and gets a beta (DPO_BETA when "auto")."""
    base = DPO_BASE_LEARNING_RATE if dpo else BASE_LEARNING_RATE
    if learning_rate is None:
        multiplier = 1.0 if learning_rate_multiplier is None else learning_rate_multiplier
        learning_rate = base * multiplier
    else:
        multiplier = learning_rate / base
    return ResolvedHyperparameters(
        n_epochs=auto_epochs(n_examples) if n_epochs is None else n_epochs,
        batch_size=auto_batch_size(n_examples) if batch_size is None else batch_size,
        learning_rate_multiplier=multiplier,
        learning_rate=learning_rate,
        base_learning_rate=base,
        beta=(DPO_BETA if beta is None else beta) if dpo else None,
    )
