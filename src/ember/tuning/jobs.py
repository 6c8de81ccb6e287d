"""The training worker: one process per running job, started as `python -m ember.tuning.jobs`.

Training runs outside the server process so serving stays responsive and a crash cannot take the server down.
Everything the worker needs is in the job's row (the settings in `metadata`) and the data directory; it
reports through the same SQLite store: metrics and message events, the latest checkpoint, and the end of
training. It polls the job's status before every step and stops when the job was cancelled. SIGTERM or SIGINT
(the server shutting down) pauses it: the step in progress is saved as a checkpoint and the job is queued
again (worker_stop.py).

A worker that trained to the end saves the adapter and marks the job `trained` (in its metadata; the status
stays `running`). Turning it `succeeded` is the job runner's part (job_runner.py): the server first serves the
adapter, so a client that sees `succeeded` can call the fine-tuned model at once.

Per-job files under the data directory:
    jobs/<job id>/checkpoints/step-NNNNNN/   PEFT adapter + optimizer state + progress (the resume points)
    jobs/<job id>/worker.log                 the worker's stdout and stderr
    adapters/<job id>/                       the finished adapter (adapter_config.json + adapter_model.safetensors)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.tuning.hyperparameters import LOW_TOKEN_ACCURACY
from ember.tuning.job_store import JobRecord
from ember.tuning.store import TuningStore
from ember.tuning.worker_stop import StopSignals, WorkerStopRequested

TRAINED = "trained"  # what run_job returns when the adapter is saved and the job awaits `succeeded`

if TYPE_CHECKING:
    from ember.models.loader import LoadedModel
    from ember.tuning.dpo_trainer import DpoTrainer
    from ember.tuning.masking import ConversationMasker
    from ember.tuning.preference_data import PreferencePair
    from ember.tuning.trainer import LoraTrainer
    from ember.tuning.trainer_config import LoraSettings, TrainerConfig


@dataclass(frozen=True)
class JobPaths:
    """Where one job's files live under the data directory."""

    data_dir: Path
    job_id: str

    @property
    def job_dir(self) -> Path:
        return self.data_dir / "jobs" / self.job_id

    @property
    def checkpoints(self) -> Path:
        return self.job_dir / "checkpoints"

    @property
    def log(self) -> Path:
        return self.job_dir / "worker.log"

    @property
    def adapter(self) -> Path:
        return self.data_dir / "adapters" / self.job_id

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (folders being written carry a `.partial` name and are skipped)."""
        if not self.checkpoints.is_dir():
            return None
        done = sorted(p for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith("step-"))
        return done[-1] if done else None


class JobFailure(Exception):
    """A failure to record on the job as error.message / error.param / error.code."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def run_job(store: TuningStore, data_dir: Path, job_id: str, stop: StopSignals | None = None) -> str:
    """Train the job (already claimed as `running`) to its end; returns the status it recorded (`queued`
    when `stop` saw a signal: the job was paused to resume later)."""
    stop = stop or StopSignals()
    job = store.get_job(job_id)
    if job is None:
        raise LookupError(f"no fine-tuning job {job_id!r}")
    if job.status != "running":
        return job.status
    paths = JobPaths(data_dir, job_id)
    try:
        return _train(store, paths, job, stop)
    except WorkerStopRequested:
        return _pause(store, job_id, stop)
    except JobFailure as failure:
        error = {"message": str(failure), "param": failure.param, "code": failure.code}
    except Exception as exc:  # the worker's last resort: whatever broke is recorded on the job, not lost
        traceback.print_exc()
        error = {"message": f"{type(exc).__name__}: {exc}", "param": None, "code": "internal_error"}
    if store.update_job(
        job_id, status="failed", error=error, finished_at=int(time.time()), expect_status=("running",)
    ):
        store.add_job_event(job_id, f"Job failed: {error['message']}", level="error")
        return "failed"
    current = store.get_job(job_id)
    return current.status if current is not None else "failed"


def _train(store: TuningStore, paths: JobPaths, job: JobRecord, stop: StopSignals) -> str:
    from ember.tuning.dpo_job import dpo_metrics_event, dpo_result_warning
    from ember.tuning.dpo_trainer import DpoMetrics, DpoResult, DpoTrainer
    from ember.tuning.trainer import TrainingCallbacks, TrainingCancelled, TrainingMetrics
    from ember.tuning.training_state import CheckpointInfo

    settings = job.metadata
    with stop.interruptible():  # nothing to save yet: a stop signal ends this at once
        model = _load_model(settings)
        trainer, train_examples, eval_examples = _prepare(store, paths, job, model)

    def on_metrics(m: TrainingMetrics | DpoMetrics) -> None:
        if isinstance(m, DpoMetrics):
            text, data = dpo_metrics_event(m)
            _event(store, job.id, text, type="metrics", data=data)
            return
        text = (
            f"Step {m.step}/{m.total_steps}: training loss={m.train_loss:.4f}, "
            f"token accuracy={m.train_mean_token_accuracy:.3f}"
        )
        if m.valid_loss is not None:
            text += f", validation loss={m.valid_loss:.4f}"
        if m.full_valid_loss is not None:
            text += f", full validation loss={m.full_valid_loss:.4f}"
        data = {
            "step": m.step,
            "total_steps": m.total_steps,
            "epoch": m.epoch,
            "train_loss": m.train_loss,
            "train_mean_token_accuracy": m.train_mean_token_accuracy,
            "valid_loss": m.valid_loss,
            "valid_mean_token_accuracy": m.valid_mean_token_accuracy,
            "progress": m.progress,
            "learning_rate": m.learning_rate,
            "tokens_per_second": m.tokens_per_second,
        }
        if m.full_valid_loss is not None:
            data["full_valid_loss"] = m.full_valid_loss
            data["full_valid_mean_token_accuracy"] = m.full_valid_mean_token_accuracy
        _event(store, job.id, text, type="metrics", data=data)

    def on_checkpoint(info: CheckpointInfo) -> None:
        store.update_job(job.id, checkpoint_path=str(info.path.relative_to(paths.data_dir)))
        _event(store, job.id, f"Checkpoint saved at step {info.step}")

    def should_stop() -> bool:
        if stop.requested:
            return True
        current = store.get_job(job.id)
        return current is None or current.status != "running"

    resume_from = paths.latest_checkpoint()
    callbacks = TrainingCallbacks(
        on_metrics=on_metrics,
        on_checkpoint=on_checkpoint,
        on_message=lambda text: _event(store, job.id, text),
        should_stop=should_stop,
        pause_on_stop=lambda: stop.requested,
    )
    # A DPO job trains on preference pairs; both runs take the same keyword arguments and callbacks.
    train = trainer.train_pairs if isinstance(trainer, DpoTrainer) else trainer.train
    try:
        result = train(
            train_examples,  # type: ignore[arg-type]
            eval_examples,  # type: ignore[arg-type]
            checkpoint_dir=paths.checkpoints,
            resume_from=resume_from,
            output_dir=paths.adapter,
            callbacks=callbacks,
        )
    except TrainingCancelled as cancelled:
        if stop.requested:
            return _pause(store, job.id, stop)
        _event(store, job.id, f"Training stopped: the job is no longer running ({cancelled})")
        current = store.get_job(job.id)
        return current.status if current is not None else "cancelled"
    accuracy = result.final_train_accuracy
    if isinstance(result, DpoResult) and (warning := dpo_result_warning(result)) is not None:
        _event(store, job.id, warning, level="warn")
    if accuracy is not None and accuracy < LOW_TOKEN_ACCURACY:
        _event(
            store,
            job.id,
            f"The final training token accuracy is {accuracy:.2f}: the model has not learned most of the "
            "training tokens. Consider more epochs (n_epochs) or a larger learning_rate_multiplier.",
            level="warn",
        )
    current = store.get_job(job.id)
    if current is None or current.status != "running":
        return current.status if current is not None else "cancelled"
    trained = {
        "trained_tokens": result.processed_tokens,
        "final_train_loss": result.final_train_loss,
        "final_train_mean_token_accuracy": accuracy,
    }
    if isinstance(result, DpoResult):
        trained["final_train_reward_accuracy"] = result.final_reward_accuracy
        trained["final_train_reward_margin"] = result.final_reward_margin
    store.update_job(
        job.id,
        trained_tokens=result.processed_tokens,
        metadata={**current.metadata, "trained": trained},
        expect_status=("running",),
    )
    _event(store, job.id, "Training finished; the adapter is saved and is being deployed")
    return TRAINED


def _pause(store: TuningStore, job_id: str, stop: StopSignals) -> str:
    """After a stop signal: the job back to `queued`, to resume from its newest checkpoint at the next start.
    Its attempt is given back, as a shutdown is not one of the failures `max_attempts` counts."""
    job = store.get_job(job_id)
    if job is None:
        return "cancelled"
    attempts = int(job.metadata.get("attempts", 1))
    metadata = {**job.metadata, "worker_pid": None, "attempts": max(attempts - 1, 0)}
    if not store.update_job(job_id, status="queued", metadata=metadata, expect_status=("running",)):
        current = store.get_job(job_id)  # cancelled or deleted meanwhile: that stands
        return current.status if current is not None else "cancelled"
    where = f"from checkpoint {Path(job.checkpoint_path).name}" if job.checkpoint_path else "from the start"
    _event(
        store,
        job_id,
        f"Training paused: the worker received {stop.name} (the server is shutting down); the job is queued "
        f"and resumes {where}",
    )
    return "queued"


def _event(store: TuningStore, job_id: str, message: str, **kwargs: Any) -> None:
    """Append an event unless the job was deleted meanwhile (then the worker is about to stop anyway)."""
    try:
        store.add_job_event(job_id, message, **kwargs)
    except LookupError:
        pass


def load_training_model(path: str | None) -> LoadedModel:
    """The base model as the trainer takes it (None: the default GGUF). A GGUF's blocks stay packed (the
    trainer decodes them per call, or once to bf16: frozen_linear.py), without the int8 kernels' tiles, which
    training never runs; a safetensors folder loads fp32."""
    from ember.models.default_model import default_gguf_path
    from ember.models.loader import LoadConfig, gguf_file_of, load_model

    weight_format = "packed" if gguf_file_of(path or default_gguf_path()) is not None else "fp32"
    return load_model(LoadConfig(model=path, weight_format=weight_format, quant_kernels=False))


def _load_model(settings: dict[str, Any]) -> LoadedModel:
    from ember.models.errors import ModelLoadError

    try:
        return load_training_model(settings.get("base_model_path"))
    except (ModelLoadError, ValueError) as exc:
        raise JobFailure(f"cannot load the base model: {exc}", "model", "model_load_failed") from exc


def _prepare(
    store: TuningStore, paths: JobPaths, job: JobRecord, model: LoadedModel
) -> tuple[LoraTrainer, list[Any], list[Any] | None]:
    """The trainer and the tokenized data of a job (examples, or preference pairs for DPO); JobFailure naming
    the input at fault."""
    from ember.tuning.batching import TrainingExamples, load_examples
    from ember.tuning.masking import ConversationMasker, MaskingError
    from ember.tuning.trainer import LoraTrainer
    from ember.tuning.trainer_config import LoraSettings, TrainerConfig

    settings = job.metadata
    try:
        # fields a newer or older ember wrote that this one does not know are dropped, so an upgrade can resume
        known = {f.name for f in fields(TrainerConfig)}
        config = TrainerConfig(**{k: v for k, v in settings["trainer"].items() if k in known})
        lora = LoraSettings(
            **{**settings["lora"], "target_modules": tuple(settings["lora"]["target_modules"])}
        )
    except (TypeError, ValueError) as exc:
        raise JobFailure(
            f"invalid hyperparameters: {exc}", "hyperparameters", "invalid_hyperparameters"
        ) from exc
    if config.max_context_length > model.config.max_position_embeddings:
        raise JobFailure(
            f"max context length {config.max_context_length} is more than the base model's "
            f"{model.config.max_position_embeddings} positions",
            "hyperparameters",
            "invalid_hyperparameters",
        )
    try:
        masker = ConversationMasker.for_model(model)
    except MaskingError as exc:
        raise JobFailure(str(exc), "model", "unsupported_model") from exc
    if job.method == "dpo":
        return _prepare_dpo(store, paths, job, model, masker, config, lora)
    datasets = [("training_file", settings["training_path"])]
    if settings.get("validation_path") is not None:
        datasets.append(("validation_file", settings["validation_path"]))
    loaded: dict[str, TrainingExamples] = {}
    for param, relative in datasets:
        try:
            examples = load_examples(paths.data_dir / relative, masker, config.max_context_length)
        except (MaskingError, OSError) as exc:
            raise JobFailure(str(exc), param, "invalid_file") from exc
        if not examples.examples:
            raise JobFailure(
                f"no example of the {param.replace('_', ' ')} fits the max context length of "
                f"{config.max_context_length} tokens with trained tokens in it",
                param,
                "invalid_file",
            )
        loaded[param] = examples
        store.add_job_event(
            job.id,
            f"{param}: {examples.rows} rows -> {len(examples.examples)} examples "
            f"({examples.rows_split_per_turn} rows split per assistant turn); dataset tokens "
            f"{examples.dataset_tokens}, tuned tokens {examples.tuned_tokens}, trained tokens "
            f"{examples.trained_tokens}; {examples.dropped_too_long} examples longer than "
            f"{config.max_context_length} tokens dropped",
        )
    validation = loaded.get("validation_file")
    trainer = LoraTrainer(model, lora, config, settings.get("base_model_name") or job.model)
    train = loaded["training_file"]
    return trainer, train.examples, None if validation is None else validation.examples


def _prepare_dpo(
    store: TuningStore,
    paths: JobPaths,
    job: JobRecord,
    model: LoadedModel,
    masker: ConversationMasker,
    config: TrainerConfig,
    lora: LoraSettings,
) -> tuple[DpoTrainer, list[PreferencePair], list[PreferencePair] | None]:
    from ember.tuning.dpo_job import DpoDataError, prepare_dpo

    try:
        return prepare_dpo(store, paths.data_dir, job, model, masker, config, lora)
    except DpoDataError as exc:
        raise JobFailure(str(exc), exc.param, "invalid_file") from exc
    except (TypeError, ValueError) as exc:
        raise JobFailure(
            f"invalid hyperparameters: {exc}", "hyperparameters", "invalid_hyperparameters"
        ) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.tuning.jobs", description="ember training worker")
    parser.add_argument("--db", required=True, help="the tuning SQLite database")
    parser.add_argument("--data-dir", required=True, help="the data directory files and checkpoints live in")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads (default: torch's)")
    parser.add_argument("--nice", type=int, default=0, help="lower the worker's CPU priority by this much")
    args = parser.parse_args(argv)
    stop = StopSignals()
    stop.install()  # first: a signal during the imports below pauses the job too
    if args.nice:
        os.nice(args.nice)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    store = TuningStore(args.db)
    status = run_job(store, Path(args.data_dir), args.job_id, stop)
    print(f"job {args.job_id} ended {status} (worker pid {os.getpid()})", flush=True)
    return 0 if status in (TRAINED, "succeeded", "cancelled", "queued") else 1


if __name__ == "__main__":
    sys.exit(main())
