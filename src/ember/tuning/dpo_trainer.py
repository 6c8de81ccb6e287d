"""LoRA DPO on ember's own network: the policy is the base model with the trained adapter, the reference is the
same network with the adapter off, so no second copy of the weights exists.

The reference log-probabilities of every pair are computed once, before the first step (no gradient, adapter
off), and kept as two floats a pair; a resumed run computes them again (they depend only on the base model and
the data). A step takes `batch_examples` pairs (OpenAI's batch_size), packed into micro-batches of whole
pairs up to `batch_tokens`; its loss is the mean DPO loss of its pairs (dpo_loss.py). Everything else is
LoraTrainer's: AdamW, warmup + decay, activation checkpointing, clipping, checkpoints a run resumes from
exactly, pause and cancel between steps, validation on a carve-out (or an evaluation dataset) with early
stopping on its loss.

Metrics per step, named as TRL reports them: loss, reward accuracy (share of pairs whose preferred reply gets
the higher implicit reward), reward margin, the mean rewards and log-probabilities of each side.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.lora.adapter import save_peft_adapter
from ember.models.loader import LoadedModel
from ember.tuning.batching import PackedBatch
from ember.tuning.dpo_loss import PreferenceLoss, PreferenceTotals, dpo_loss, sequence_logprobs
from ember.tuning.preference_data import (
    PreferencePair,
    pack_pairs,
    pair_micro_batches,
    plan_pair_steps,
    split_pairs,
)
from ember.tuning.trainer import LoraTrainer, TrainingCallbacks, TrainingCancelled, TrainingResult, _say
from ember.tuning.trainer_config import DpoSettings, LoraSettings, TrainerConfig
from ember.tuning.training_state import TrainingProgress, restore_checkpoint, save_checkpoint


@dataclass(frozen=True)
class DpoMetrics:
    """One optimizer step of a DPO run; `values` holds train_* (and valid_* / full_valid_* when evaluated)."""

    step: int
    total_steps: int
    epoch: int  # 1-based epoch the step belongs to
    values: dict[str, float]
    learning_rate: float
    progress: float
    tokens_per_second: float


@dataclass(frozen=True)
class DpoResult(TrainingResult):
    final_reward_accuracy: float | None = None  # over the last epoch's pairs
    final_reward_margin: float | None = None


@dataclass
class _DpoRun:
    train: list[PreferencePair]
    eval: list[PreferencePair]
    # id(pair) -> [2] reference log-probabilities (by identity: a pair holds lists, and lives for the whole run)
    reference: dict[int, torch.Tensor]
    valid_every: int
    steps_per_epoch: int
    total_steps: int
    checkpoint_dir: Path | None
    callbacks: TrainingCallbacks


class DpoTrainer(LoraTrainer):
    """Trains one LoRA adapter with DPO on an fp32 model; `beta` weighs the implicit reward."""

    def __init__(
        self,
        model: LoadedModel,
        lora: LoraSettings,
        config: TrainerConfig,
        base_model_name: str,
        dpo: DpoSettings,
    ) -> None:
        super().__init__(model, lora, config, base_model_name)
        self.beta = dpo.beta
        self.reference_batch_pairs = dpo.reference_batch_pairs
        self._last_values: dict[str, float] = {}

    def train_pairs(
        self,
        train_pairs: list[PreferencePair],
        eval_pairs: list[PreferencePair] | None = None,
        *,
        checkpoint_dir: Path | None = None,
        resume_from: Path | None = None,
        output_dir: Path | None = None,
        callbacks: TrainingCallbacks | None = None,
    ) -> DpoResult:
        """Every epoch (or until early stopping); the adapter is saved to `output_dir` in PEFT format.
        Without `eval_pairs` a carve-out of the training pairs is the evaluation set (`[]`: none)."""
        callbacks = callbacks or TrainingCallbacks()
        config = self.config
        if eval_pairs is None:
            train_pairs, eval_pairs = split_pairs(
                train_pairs, config.eval_fraction, config.min_eval_carve_out_examples, config.seed
            )
        if not train_pairs:
            raise ValueError("the training data has no preference pairs")
        torch.manual_seed(config.seed)
        progress = TrainingProgress()
        if resume_from is not None:
            progress = restore_checkpoint(resume_from, self.lora, self.optimizer, self.model.config)
            _say(callbacks, f"Resumed from checkpoint at step {progress.step} (epoch {progress.epoch})")
        self._checkpointed_step = progress.step
        started = time.perf_counter()
        reference = self.reference_logprobs(train_pairs + eval_pairs)
        _say(
            callbacks,
            f"Reference log-probabilities of {len(train_pairs) + len(eval_pairs)} pairs computed with the "
            f"adapter off ({time.perf_counter() - started:.1f} s)",
        )
        steps_per_epoch = math.ceil(
            len(plan_pair_steps(train_pairs, config.seed, config.batch_examples, config.batch_tokens))
            / config.grad_accumulation
        )
        total_steps = config.epochs * steps_per_epoch
        run = _DpoRun(
            train_pairs,
            eval_pairs,
            reference,
            config.eval_every_steps or max(1, total_steps // 20),
            steps_per_epoch,
            total_steps,
            checkpoint_dir,
            callbacks,
        )
        epoch_totals = PreferenceTotals()
        while progress.epoch < config.epochs and not progress.stopped_early:
            epoch_totals = self._run_dpo_epoch(run, progress)
        if progress.stopped_early:
            _say(callbacks, f"Early stop at step {progress.step}: validation loss stopped improving")
        adapter = self.lora.to_adapter("adapter")
        if output_dir is not None:
            save_peft_adapter(adapter, str(output_dir), self.base_model_name)
        last = epoch_totals.means("train") if epoch_totals.pairs else {}
        return DpoResult(
            adapter=adapter,
            steps=progress.step,
            epochs_completed=progress.epoch,
            trained_tokens=progress.trained_tokens,
            processed_tokens=progress.processed_tokens,
            final_train_loss=progress.last_train_loss,
            final_train_accuracy=None,
            best_valid_loss=progress.best_valid_loss,
            stopped_early=progress.stopped_early,
            final_reward_accuracy=last.get("train_reward_accuracy"),
            final_reward_margin=last.get("train_reward_margin"),
        )

    @torch.no_grad()
    def reference_logprobs(self, pairs: list[PreferencePair]) -> dict[int, torch.Tensor]:
        """Each pair's (preferred, non-preferred) sequence log-probabilities under the base model alone."""
        result: dict[int, torch.Tensor] = {}
        indices = list(range(len(pairs)))
        if self.reference_batch_pairs is not None:
            groups = [
                indices[i : i + self.reference_batch_pairs]
                for i in range(0, len(indices), self.reference_batch_pairs)
            ]
        else:
            groups = pair_micro_batches(indices, pairs, self.config.batch_tokens)
        for group in groups:
            chosen = [pairs[i] for i in group]
            batch = pack_pairs(chosen)
            hidden = self.network(batch.input_ids, batch.positions, batch.attention(), None, lora=None)
            logps = self._sequence_logprobs(hidden, batch).view(-1, 2)
            for pair, row in zip(chosen, logps, strict=True):
                result[id(pair)] = row.clone()
        return result

    @torch.no_grad()
    def evaluate_pairs(
        self, pairs: list[PreferencePair], reference: dict[int, torch.Tensor] | None = None
    ) -> PreferenceTotals:
        """DPO loss and reward metrics of `pairs` with the adapter, no dropout (reference computed if not given)."""
        self.lora.eval()
        reference = reference if reference is not None else self.reference_logprobs(pairs)
        totals = PreferenceTotals()
        for group in pair_micro_batches(list(range(len(pairs))), pairs, self.config.batch_tokens):
            chosen = [pairs[i] for i in group]
            totals.add(self._pair_loss(chosen, reference))
        return totals

    def _sequence_logprobs(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return sequence_logprobs(hidden, batch, self.network.compute_logits, self.config.loss_chunk_tokens)

    def _pair_loss(self, pairs: list[PreferencePair], reference: dict[int, torch.Tensor]) -> PreferenceLoss:
        batch = pack_pairs(pairs)
        policy = self._sequence_logprobs(self._hidden_states(batch), batch).view(-1, 2)  # [P, 2]
        ref = torch.stack([reference[id(pair)] for pair in pairs])  # [P, 2]
        return dpo_loss(policy, ref, self.beta)

    def _run_dpo_epoch(self, run: _DpoRun, progress: TrainingProgress) -> PreferenceTotals:
        """The remaining steps of the current epoch; returns the totals of the steps this call ran."""
        config = self.config
        plan = plan_pair_steps(
            run.train, config.seed + progress.epoch, config.batch_examples, config.batch_tokens
        )
        epoch_totals = PreferenceTotals()
        while progress.step_in_epoch < run.steps_per_epoch and not progress.stopped_early:
            callbacks = run.callbacks
            if callbacks.should_stop is not None and callbacks.should_stop():
                pause = callbacks.pause_on_stop is not None and callbacks.pause_on_stop()
                if pause and run.checkpoint_dir is not None and progress.step > self._checkpointed_step:
                    self._save_dpo_checkpoint(run, progress)
                raise TrainingCancelled(f"stopped at step {progress.step}")
            first = progress.step_in_epoch * config.grad_accumulation
            chosen = [i for group in plan[first : first + config.grad_accumulation] for i in group]
            learning_rate = config.learning_rate_at(progress.step, run.total_steps)
            started = time.perf_counter()
            totals, tokens = self._dpo_step(run, chosen, learning_rate)
            elapsed = max(time.perf_counter() - started, 1e-9)
            epoch_totals.merge(totals)
            progress.step += 1
            progress.step_in_epoch += 1
            progress.processed_tokens += tokens
            progress.trained_tokens += sum(run.train[i].num_trained_tokens for i in chosen)
            values = totals.means("train")
            progress.last_train_loss = values["train_loss"]
            epoch_done = progress.step_in_epoch == run.steps_per_epoch
            if run.eval and progress.step % run.valid_every == 0:
                values.update(self.evaluate_pairs(run.eval, run.reference).means("valid"))
                progress.last_valid_loss = values["valid_loss"]
            if run.eval and epoch_done:
                values.update(self.evaluate_pairs(run.eval, run.reference).means("full_valid"))
                self._note_dpo_full_valid(progress, values["full_valid_loss"])
            if epoch_done:
                progress.epoch += 1
                progress.step_in_epoch = 0
            self._last_values = values
            if callbacks.on_metrics is not None:
                callbacks.on_metrics(
                    DpoMetrics(  # type: ignore[arg-type]
                        step=progress.step,
                        total_steps=run.total_steps,
                        epoch=progress.epoch if epoch_done else progress.epoch + 1,
                        values=values,
                        learning_rate=learning_rate,
                        progress=progress.step / run.total_steps,
                        tokens_per_second=tokens / elapsed,
                    )
                )
            periodic = (
                config.checkpoint_every_steps is not None
                and progress.step % config.checkpoint_every_steps == 0
            )
            if run.checkpoint_dir is not None and (epoch_done or progress.stopped_early or periodic):
                self._save_dpo_checkpoint(run, progress)
            if epoch_done:
                break
        return epoch_totals

    def _dpo_step(
        self, run: _DpoRun, indices: list[int], learning_rate: float
    ) -> tuple[PreferenceTotals, int]:
        """One optimizer step over the pairs at `indices`: mean DPO loss, micro-batch by micro-batch."""
        self.lora.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.zero_grad(set_to_none=True)
        totals = PreferenceTotals()
        tokens = 0
        for group in pair_micro_batches(indices, run.train, self.config.batch_tokens):
            pairs = [run.train[i] for i in group]
            terms = self._pair_loss(pairs, run.reference)
            (terms.losses.sum() / len(indices)).backward()
            totals.add(terms)
            tokens += sum(p.num_tokens for p in pairs)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.lora.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return totals, tokens

    def _note_dpo_full_valid(self, progress: TrainingProgress, valid_loss: float) -> None:
        progress.last_full_valid_loss = valid_loss
        if progress.best_valid_loss is None or valid_loss < progress.best_valid_loss:
            progress.best_valid_loss = valid_loss
            progress.evals_without_improvement = 0
            return
        progress.evals_without_improvement += 1
        if self.config.early_stop and progress.evals_without_improvement >= self.config.early_stop_patience:
            progress.stopped_early = True

    def _save_dpo_checkpoint(self, run: _DpoRun, progress: TrainingProgress) -> None:
        assert run.checkpoint_dir is not None
        metrics = {"step": progress.step, **self._last_values}
        info = save_checkpoint(
            run.checkpoint_dir, self.lora, self.optimizer, progress, self.base_model_name, metrics
        )
        self._checkpointed_step = progress.step
        if run.callbacks.on_checkpoint is not None:
            run.callbacks.on_checkpoint(info)
