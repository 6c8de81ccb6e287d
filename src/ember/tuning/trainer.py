"""LoRA supervised fine-tuning on ember's own network: packed padding-free batches, AdamW, warmup + decay,
gradient accumulation, validation loss with early stopping, and checkpoints a run resumes from exactly.

The loss of one optimizer step is sum(weight_t * CE_t) / (number of trained tokens in the step), over every
batch the step accumulates: per-sample weights are real multipliers, and a step's size does not depend on how
its tokens were split into micro-batches. Logits are computed only at trained positions and only `loss_chunk_tokens`
of them at a time (chunked_loss.py), and with activation checkpointing each decoder layer keeps only its input
for backward, so a step's memory is bounded by its micro-batch, not by the vocabulary or the batch size.

Metrics are the ones OpenAI reports: each step's training loss and mean token accuracy (trained positions whose
argmax is the target); with validation data, the loss and accuracy of one validation batch every
`valid_every` steps, and of the whole validation set at the end of each epoch (full_valid_*).

Everything random is a function of the seed: the adapter's initialisation, the carve-out, each epoch's batch
order (seed + epoch), and LoRA dropout (torch's global generator: `train` seeds it, checkpoints save it). A
run resumed from a checkpoint therefore replays the same batches and ends with the same adapter as an
uninterrupted one.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from ember.lora.adapter import LoraAdapter, save_peft_adapter
from ember.lora.fused_training import training_context
from ember.lora.layers import TrainableLora, attach_trainable_lora
from ember.models.loader import LoadedModel
from ember.tuning.batching import PackedBatch, micro_batches, pack, plan_batches
from ember.tuning.chunked_loss import TokenLoss, chunked_cross_entropy
from ember.tuning.frozen_linear import freeze_base_linears, resolve_base_matmul_dtype
from ember.tuning.masking import TokenizedExample
from ember.tuning.trainer_config import LoraSettings, TrainerConfig
from ember.tuning.training_state import (
    CheckpointInfo,
    TrainingProgress,
    restore_checkpoint,
    save_checkpoint,
)


class TrainingCancelled(Exception):
    """`should_stop` asked the run to stop; the last checkpoint (for a pause: of the last step) is where a
    resumed run continues."""


@dataclass(frozen=True)
class TrainingMetrics:
    step: int  # optimizer steps done
    total_steps: int
    epoch: int  # 1-based epoch the step belongs to
    train_loss: float  # weighted mean cross-entropy of the step's trained tokens
    train_mean_token_accuracy: float  # share of the step's trained tokens the model predicted (argmax)
    valid_loss: float | None  # of one validation batch, on steps that evaluated one
    valid_mean_token_accuracy: float | None
    full_valid_loss: float | None  # of the whole validation set, on steps that ended an epoch
    full_valid_mean_token_accuracy: float | None
    learning_rate: float
    progress: float  # step / total_steps
    tokens_per_second: float  # input tokens of the step / its wall time
    trained_tokens: int  # trained tokens seen so far in the run


@dataclass(frozen=True)
class TrainingResult:
    adapter: LoraAdapter
    steps: int
    epochs_completed: int
    trained_tokens: int  # tokens that carried loss, over all steps
    processed_tokens: int  # input tokens of all steps
    final_train_loss: float | None
    final_train_accuracy: float | None  # token accuracy over the last epoch
    best_valid_loss: float | None
    stopped_early: bool


@dataclass(frozen=True)
class TrainingCallbacks:
    on_metrics: Callable[[TrainingMetrics], None] | None = None
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None
    on_message: Callable[[str], None] | None = None
    should_stop: Callable[[], bool] | None = None  # polled before every step
    # Asked once should_stop is true: whether this stop is a pause, which first saves a checkpoint of the steps
    # done since the last one (the worker stopped at a server's shutdown), rather than a cancel.
    pause_on_stop: Callable[[], bool] | None = None


def split_carve_out(
    examples: list[TokenizedExample], config: TrainerConfig
) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    """(train, eval): a seeded fraction of the rows held out, all examples of a row on the same side."""
    rows = sorted({e.row_index for e in examples})
    held = int(len(rows) * config.eval_fraction)
    if len(rows) < config.min_eval_carve_out_examples or held < 1:
        return examples, []
    random.Random(config.seed).shuffle(rows)
    eval_rows = set(rows[:held])
    train = [e for e in examples if e.row_index not in eval_rows]
    return train, [e for e in examples if e.row_index in eval_rows]


@dataclass(frozen=True)
class Evaluation:
    loss: float  # weighted mean cross-entropy over the trained tokens
    mean_token_accuracy: float


@dataclass(frozen=True)
class _Run:
    """What stays fixed during one call of `train`."""

    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    eval_batches: list[list[int]]  # the validation batches, taken in turn every `valid_every` steps
    valid_every: int
    steps_per_epoch: int
    total_steps: int
    checkpoint_dir: Path | None
    callbacks: TrainingCallbacks


class LoraTrainer:
    """Trains one LoRA adapter on a model loaded fp32, or packed (a GGUF's blocks, `quant_kernels=False`).

    The trainer takes the network over: its base projections become FrozenLinear modules (frozen_linear.py),
    with their matmuls in `config.base_matmul_dtype`."""

    def __init__(
        self, model: LoadedModel, lora: LoraSettings, config: TrainerConfig, base_model_name: str
    ) -> None:
        if model.weight_format not in ("fp32", "packed"):
            raise ValueError(
                f"training needs an fp32 or packed model, got weight_format {model.weight_format!r}"
            )
        freeze_base_linears(model.network, resolve_base_matmul_dtype(config.base_matmul_dtype, model.device))
        self.model = model
        self.network = model.network
        self.config = config
        self.base_model_name = base_model_name
        self.lora: TrainableLora = attach_trainable_lora(
            self.network, lora.rank, lora.alpha, lora.dropout, lora.target_modules, config.seed
        )
        self.optimizer = torch.optim.AdamW(
            self.lora.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self._checkpointed_step = 0  # the step of the newest checkpoint: a pause saves only steps after it

    def train(
        self,
        train_examples: list[TokenizedExample],
        eval_examples: list[TokenizedExample] | None = None,
        *,
        checkpoint_dir: Path | None = None,
        resume_from: Path | None = None,
        output_dir: Path | None = None,
        callbacks: TrainingCallbacks | None = None,
    ) -> TrainingResult:
        """Run every epoch (or until early stopping) and save the adapter to `output_dir` in PEFT format.

        Without `eval_examples` a carve-out of the training rows is the evaluation set (`[]`: none).
        """
        callbacks = callbacks or TrainingCallbacks()
        if eval_examples is None:
            train_examples, eval_examples = split_carve_out(train_examples, self.config)
        if not any(e.num_trained_tokens for e in train_examples):
            raise ValueError("the training data has no trained tokens")
        torch.manual_seed(self.config.seed)
        progress = TrainingProgress()
        if resume_from is not None:
            progress = restore_checkpoint(resume_from, self.lora, self.optimizer, self.model.config)
            _say(callbacks, f"Resumed from checkpoint at step {progress.step} (epoch {progress.epoch})")
        self._checkpointed_step = progress.step
        plan = plan_batches(
            train_examples, self.config.batch_tokens, self.config.seed, self.config.batch_examples
        )
        steps_per_epoch = math.ceil(len(plan) / self.config.grad_accumulation)
        total_steps = self.config.epochs * steps_per_epoch
        eval_batches = plan_batches(
            eval_examples, self.config.batch_tokens, seed=0, max_batch_examples=self.config.batch_examples
        )
        run = _Run(
            train_examples,
            eval_examples,
            eval_batches,
            self.config.eval_every_steps or max(1, total_steps // 20),
            steps_per_epoch,
            total_steps,
            checkpoint_dir,
            callbacks,
        )
        while progress.epoch < self.config.epochs and not progress.stopped_early:
            self._run_epoch(run, progress)
        if progress.stopped_early:
            _say(callbacks, f"Early stop at step {progress.step}: validation loss stopped improving")
        adapter = self.lora.to_adapter("adapter")
        if output_dir is not None:
            save_peft_adapter(adapter, str(output_dir), self.base_model_name)
        return TrainingResult(
            adapter=adapter,
            steps=progress.step,
            epochs_completed=progress.epoch,
            trained_tokens=progress.trained_tokens,
            processed_tokens=progress.processed_tokens,
            final_train_loss=progress.last_train_loss,
            final_train_accuracy=progress.last_epoch_accuracy,
            best_valid_loss=progress.best_valid_loss,
            stopped_early=progress.stopped_early,
        )

    @torch.no_grad()
    def evaluate(self, examples: list[TokenizedExample], indices: list[int] | None = None) -> Evaluation:
        """Loss and token accuracy over the trained tokens of `examples` (or of those at `indices`), no dropout."""
        self.lora.eval()
        chosen = list(range(len(examples))) if indices is None else indices
        total = 0.0
        correct = count = 0
        for pack_indices in micro_batches(chosen, examples, self.config.batch_tokens):
            terms = self.token_loss(pack([examples[i] for i in pack_indices]))
            total += float(terms.weighted_sum)
            correct += terms.correct
            count += terms.count
        return Evaluation(total / max(count, 1), correct / max(count, 1))

    def token_loss(self, batch: PackedBatch) -> TokenLoss:
        """sum(weight_t * cross-entropy_t) and the argmax hits over the trained positions of one packed batch."""
        hidden = self._hidden_states(batch)  # [T, H]
        trained = (batch.loss_weights > 0).nonzero().squeeze(1)  # [N]
        return chunked_cross_entropy(
            hidden[trained],
            batch.target_ids[trained],
            batch.loss_weights[trained],
            self.network.compute_logits,
            self.config.loss_chunk_tokens,
            frozen_output=not any(p.requires_grad for p in self.network.lm_head.parameters()),
        )

    def _hidden_states(self, batch: PackedBatch) -> torch.Tensor:
        """The network's final hidden states [T, H] with the adapter; under autograd with activation
        checkpointing, each layer is recomputed in backward from its saved input instead of keeping its
        intermediates (attention scores, the MLP's [T, intermediate] tensors) for the whole forward pass."""
        network, lora, attention = self.network, training_context(self.lora), batch.attention()
        threshold = self.config.activation_checkpoint_min_tokens
        if threshold is None or batch.num_tokens < threshold or not torch.is_grad_enabled():
            return network(batch.input_ids, batch.positions, attention, None, lora=lora)
        h = network.embed_tokens(batch.input_ids)  # [T, H]
        cos, sin = network.rotary.cos_sin(batch.positions, h.dtype)  # [T, D] each
        for i, layer in enumerate(network.layers):
            h = checkpoint(layer, h, cos, sin, attention, None, lora.layer(i), use_reentrant=False)
        return network.norm(h)

    def _run_epoch(self, run: _Run, progress: TrainingProgress) -> None:
        """The remaining steps of the current epoch (all of them unless resumed mid-epoch)."""
        config = self.config
        plan = plan_batches(
            run.train, config.batch_tokens, config.seed + progress.epoch, config.batch_examples
        )
        while progress.step_in_epoch < run.steps_per_epoch and not progress.stopped_early:
            if run.callbacks.should_stop is not None and run.callbacks.should_stop():
                pause = run.callbacks.pause_on_stop is not None and run.callbacks.pause_on_stop()
                if pause and run.checkpoint_dir is not None and progress.step > self._checkpointed_step:
                    self._save_checkpoint(run, progress)
                raise TrainingCancelled(f"stopped at step {progress.step}")
            first = progress.step_in_epoch * config.grad_accumulation
            chosen = [i for batch in plan[first : first + config.grad_accumulation] for i in batch]
            batches = [
                pack([run.train[i] for i in indices])
                for indices in micro_batches(chosen, run.train, config.batch_tokens)
            ]
            learning_rate = config.learning_rate_at(progress.step, run.total_steps)
            started = time.perf_counter()
            train = self._step(batches, learning_rate)
            elapsed = max(time.perf_counter() - started, 1e-9)
            trained = sum(b.num_trained_tokens for b in batches)
            progress.step += 1
            progress.step_in_epoch += 1
            progress.trained_tokens += trained
            progress.processed_tokens += sum(b.num_tokens for b in batches)
            progress.last_train_loss = train.loss
            progress.last_train_accuracy = train.mean_token_accuracy
            progress.epoch_correct += round(train.mean_token_accuracy * trained)
            progress.epoch_trained += trained
            epoch_done = progress.step_in_epoch == run.steps_per_epoch
            valid = full_valid = None
            if run.eval_batches and progress.step % run.valid_every == 0:
                turn = (progress.step // run.valid_every - 1) % len(run.eval_batches)
                valid = self.evaluate(run.eval, run.eval_batches[turn])
                progress.last_valid_loss = valid.loss
                progress.last_valid_accuracy = valid.mean_token_accuracy
            if run.eval and epoch_done:
                full_valid = self.evaluate(run.eval)
                self._note_full_valid(progress, full_valid)
            if epoch_done:
                progress.epoch += 1
                progress.step_in_epoch = 0
                progress.last_epoch_accuracy = progress.epoch_correct / max(progress.epoch_trained, 1)
                progress.epoch_correct = progress.epoch_trained = 0
            if run.callbacks.on_metrics is not None:
                run.callbacks.on_metrics(
                    TrainingMetrics(
                        step=progress.step,
                        total_steps=run.total_steps,
                        epoch=progress.epoch if epoch_done else progress.epoch + 1,
                        train_loss=train.loss,
                        train_mean_token_accuracy=train.mean_token_accuracy,
                        valid_loss=None if valid is None else valid.loss,
                        valid_mean_token_accuracy=None if valid is None else valid.mean_token_accuracy,
                        full_valid_loss=None if full_valid is None else full_valid.loss,
                        full_valid_mean_token_accuracy=(
                            None if full_valid is None else full_valid.mean_token_accuracy
                        ),
                        learning_rate=learning_rate,
                        progress=progress.step / run.total_steps,
                        tokens_per_second=sum(b.num_tokens for b in batches) / elapsed,
                        trained_tokens=progress.trained_tokens,
                    )
                )
            periodic = (
                config.checkpoint_every_steps is not None
                and progress.step % config.checkpoint_every_steps == 0
            )
            if run.checkpoint_dir is not None and (epoch_done or progress.stopped_early or periodic):
                self._save_checkpoint(run, progress)
            if epoch_done:
                return

    def _save_checkpoint(self, run: _Run, progress: TrainingProgress) -> None:
        assert run.checkpoint_dir is not None
        info = save_checkpoint(run.checkpoint_dir, self.lora, self.optimizer, progress, self.base_model_name)
        self._checkpointed_step = progress.step
        if run.callbacks.on_checkpoint is not None:
            run.callbacks.on_checkpoint(info)

    def _step(self, batches: list[PackedBatch], learning_rate: float) -> Evaluation:
        """One optimizer step over the micro-batches of a step; returns the step's loss and token accuracy."""
        self.lora.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.zero_grad(set_to_none=True)
        trained = sum(b.num_trained_tokens for b in batches)
        loss_sum = 0.0
        correct = 0
        for batch in batches:
            terms = self.token_loss(batch)
            loss = terms.weighted_sum / trained
            loss.backward()
            loss_sum += float(loss.detach())
            correct += terms.correct
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.lora.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return Evaluation(loss_sum, correct / max(trained, 1))

    def _note_full_valid(self, progress: TrainingProgress, evaluation: Evaluation) -> None:
        """Record an evaluation; sets `stopped_early` once early stopping has seen enough evaluations fail."""
        valid_loss = evaluation.loss
        progress.last_full_valid_loss = valid_loss
        progress.last_full_valid_accuracy = evaluation.mean_token_accuracy
        if progress.best_valid_loss is None or valid_loss < progress.best_valid_loss:
            progress.best_valid_loss = valid_loss
            progress.evals_without_improvement = 0
            return
        progress.evals_without_improvement += 1
        if self.config.early_stop and progress.evals_without_improvement >= self.config.early_stop_patience:
            progress.stopped_early = True


def _say(callbacks: TrainingCallbacks, message: str) -> None:
    if callbacks.on_message is not None:
        callbacks.on_message(message)
