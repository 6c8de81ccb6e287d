"""Where a training run is, and its checkpoints on disk: what a resumed run needs to continue exactly.

A checkpoint is a folder `step-NNNNNN/` holding the adapter in PEFT format (so any checkpoint can be served
or loaded by PEFT as it is), `trainer_state.pt` (optimizer state, torch's RNG state, the progress counters)
and `checkpoint.json` (step, epoch, losses, time: what listing checkpoints shows). It is written under a
`.partial` name and renamed into place, so a worker killed mid-write never leaves a half checkpoint that
looks complete.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ember.lora.adapter import load_peft_adapter, save_peft_adapter
from ember.lora.layers import TrainableLora
from ember.models.config import ModelConfig

STATE_FILE = "trainer_state.pt"
INFO_FILE = "checkpoint.json"


@dataclass
class TrainingProgress:
    """The counters of a run; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps completed in the current epoch
    trained_tokens: int = 0  # tokens that carried loss
    processed_tokens: int = 0  # input tokens
    last_train_loss: float | None = None
    last_train_accuracy: float | None = None  # mean token accuracy of the last step
    last_valid_loss: float | None = None  # of the last validation batch
    last_valid_accuracy: float | None = None
    last_full_valid_loss: float | None = None  # of the last evaluation of the whole validation set
    last_full_valid_accuracy: float | None = None
    best_valid_loss: float | None = None  # best full validation loss (early stopping)
    epoch_correct: int = 0  # trained tokens predicted right in the current epoch so far
    epoch_trained: int = 0
    last_epoch_accuracy: float | None = None  # token accuracy over the last completed epoch
    evals_without_improvement: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    epoch: int  # epochs fully done at this checkpoint
    train_loss: float | None
    valid_loss: float | None
    created_at: float
    metrics: dict[str, Any] = field(default_factory=dict)  # OpenAI's checkpoint metrics at this step


def save_checkpoint(
    checkpoint_dir: Path,
    lora: TrainableLora,
    optimizer: torch.optim.Optimizer,
    progress: TrainingProgress,
    base_model_name: str,
    metrics: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """`metrics`: what the checkpoint lists (default: SFT's, from `progress`; a DPO run passes its own)."""
    final = checkpoint_dir / f"step-{progress.step:06d}"
    partial = checkpoint_dir / f".step-{progress.step:06d}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by a worker killed while writing it
    partial.mkdir(parents=True)
    save_peft_adapter(lora.to_adapter("checkpoint"), str(partial), base_model_name)
    state = {
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "progress": asdict(progress),
    }
    torch.save(state, partial / STATE_FILE)
    info = CheckpointInfo(
        final,
        progress.step,
        progress.epoch,
        progress.last_train_loss,
        progress.last_full_valid_loss,
        time.time(),
        checkpoint_metrics(progress) if metrics is None else metrics,
    )
    record = {k: v for k, v in asdict(info).items() if k != "path"}
    (partial / INFO_FILE).write_text(json.dumps(record), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return info


def checkpoint_metrics(progress: TrainingProgress) -> dict[str, Any]:
    """The metrics OpenAI lists on a checkpoint; validation ones only when there is validation data."""
    metrics: dict[str, Any] = {
        "step": progress.step,
        "train_loss": progress.last_train_loss,
        "train_mean_token_accuracy": progress.last_train_accuracy,
    }
    validation = {
        "valid_loss": progress.last_valid_loss,
        "valid_mean_token_accuracy": progress.last_valid_accuracy,
        "full_valid_loss": progress.last_full_valid_loss,
        "full_valid_mean_token_accuracy": progress.last_full_valid_accuracy,
    }
    metrics.update({name: value for name, value in validation.items() if value is not None})
    return metrics


def restore_checkpoint(
    checkpoint: Path, lora: TrainableLora, optimizer: torch.optim.Optimizer, model_config: ModelConfig
) -> TrainingProgress:
    """Load adapter weights, optimizer state and torch's RNG from a checkpoint; returns its progress."""
    state_path = checkpoint / STATE_FILE
    if not state_path.is_file():
        raise ValueError(f"{checkpoint} is not a training checkpoint (no {STATE_FILE})")
    lora.load_adapter(load_peft_adapter(str(checkpoint), model_config, "checkpoint"))
    state = torch.load(state_path, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return TrainingProgress(**state["progress"])


def read_checkpoint_info(path: Path) -> CheckpointInfo:
    """What a checkpoint folder holds, without loading its tensors (for listing checkpoints)."""
    record = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    return CheckpointInfo(path=path, **record)
