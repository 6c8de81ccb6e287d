"""The DPO side of the training worker (jobs.py): a DPO job's pairs and trainer, and its metrics as the events
a user reads. Everything else (claiming, cancel, pause, checkpoints, the hand-off to serving) is the worker's
own, the same for both methods."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.tuning.dpo_trainer import DpoMetrics, DpoResult, DpoTrainer
from ember.tuning.hyperparameters import LOW_REWARD_ACCURACY
from ember.tuning.masking import ConversationMasker, MaskingError
from ember.tuning.preference_data import PreferenceExamples, PreferencePair, load_pairs
from ember.tuning.trainer_config import DpoSettings, LoraSettings, TrainerConfig

if TYPE_CHECKING:
    from ember.models.loader import LoadedModel
    from ember.tuning.job_store import JobRecord
    from ember.tuning.store import TuningStore


class DpoDataError(ValueError):
    """A dataset of a DPO job cannot be trained on; `param` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def prepare_dpo(
    store: TuningStore,
    data_dir: Path,
    job: JobRecord,
    model: LoadedModel,
    masker: ConversationMasker,
    config: TrainerConfig,
    lora: LoraSettings,
) -> tuple[DpoTrainer, list[PreferencePair], list[PreferencePair] | None]:
    """The trainer and tokenized pairs of a DPO job (DpoDataError for a dataset without usable pairs; ValueError
    for bad settings)."""
    settings = job.metadata
    dpo = DpoSettings(**settings.get("dpo", {}))
    datasets = [("training_file", settings["training_path"])]
    if settings.get("validation_path") is not None:
        datasets.append(("validation_file", settings["validation_path"]))
    loaded: dict[str, PreferenceExamples] = {}
    for param, relative in datasets:
        try:
            pairs = load_pairs(data_dir / relative, masker, config.max_context_length)
        except (MaskingError, OSError) as exc:
            raise DpoDataError(str(exc), param) from exc
        if not pairs.pairs:
            raise DpoDataError(
                f"no pair of the {param.replace('_', ' ')} fits the max context length of "
                f"{config.max_context_length} tokens with trained tokens on both sides",
                param,
            )
        loaded[param] = pairs
        store.add_job_event(
            job.id,
            f"{param}: {pairs.rows} preference rows -> {len(pairs.pairs)} pairs; tokens {pairs.tokens}, "
            f"trained tokens {pairs.trained_tokens}; {pairs.dropped_too_long} pairs longer than "
            f"{config.max_context_length} tokens dropped",
        )
    trainer = DpoTrainer(model, lora, config, settings.get("base_model_name") or job.model, dpo)
    validation = loaded.get("validation_file")
    return trainer, loaded["training_file"].pairs, None if validation is None else validation.pairs


def dpo_metrics_event(m: DpoMetrics) -> tuple[str, dict[str, Any]]:
    """(message, data) of a DPO step's metrics event."""
    v = m.values
    text = (
        f"Step {m.step}/{m.total_steps}: DPO loss={v['train_loss']:.4f}, "
        f"reward accuracy={v['train_reward_accuracy']:.3f}, reward margin={v['train_reward_margin']:.4f}"
    )
    if "valid_loss" in v:
        text += (
            f", validation loss={v['valid_loss']:.4f}, "
            f"validation reward accuracy={v['valid_reward_accuracy']:.3f}"
        )
    if "full_valid_loss" in v:
        text += f", full validation loss={v['full_valid_loss']:.4f}"
    data = {
        "step": m.step,
        "total_steps": m.total_steps,
        "epoch": m.epoch,
        **v,
        "progress": m.progress,
        "learning_rate": m.learning_rate,
        "tokens_per_second": m.tokens_per_second,
    }
    return text, data


def dpo_result_warning(result: DpoResult) -> str | None:
    """A warning event's text when the trained policy still does not prefer most preferred replies."""
    accuracy = result.final_reward_accuracy
    if accuracy is None or accuracy >= LOW_REWARD_ACCURACY:
        return None
    return (
        f"The final training reward accuracy is {accuracy:.2f}: the policy does not yet prefer the preferred "
        "output of most training pairs. Consider more epochs (n_epochs), a larger learning_rate_multiplier "
        "or a smaller beta."
    )
