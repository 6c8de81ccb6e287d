"""OpenAI's documented rule for "auto" epochs and batch size, the base learning rate, and how a request resolves
(explicit values win, Fireworks' absolute learning rate wins over the multiplier)."""

from __future__ import annotations

import pytest

from ember.tuning.hyperparameters import (
    BASE_LEARNING_RATE,
    auto_batch_size,
    auto_epochs,
    resolve_hyperparameters,
)
from ember.tuning.job_request import JobRequest, JobRequestError, resolve_settings
from ember.tuning.trainer_config import LoraSettings, TrainerConfig


@pytest.mark.parametrize(
    ("rows", "epochs", "batch_size"),
    [
        (1, 25, 1),  # 100 // 1 = 100, capped at 25 epochs
        (4, 25, 1),
        (10, 10, 1),  # the kind of dataset: 100 examples seen in all
        (20, 5, 1),
        (33, 3, 1),  # 99 < 100: 100 // 33 = 3
        (34, 3, 1),
        (1000, 3, 2),  # ~0.2% of the examples
        (8333, 3, 17),
        (10_000, 2, 20),  # 30,000 > 25,000: 25,000 // 10,000 = 2
        (200_000, 1, 256),  # at least 1 epoch; batch size capped at 256
    ],
)
def test_auto_epochs_and_batch_size_follow_openai(rows: int, epochs: int, batch_size: int) -> None:
    assert (auto_epochs(rows), auto_batch_size(rows)) == (epochs, batch_size)
    resolved = resolve_hyperparameters(rows)
    assert (resolved.n_epochs, resolved.batch_size) == (epochs, batch_size)
    assert (resolved.learning_rate_multiplier, resolved.learning_rate) == (1.0, BASE_LEARNING_RATE)


def test_explicit_values_win_and_an_absolute_rate_wins_over_the_multiplier() -> None:
    resolved = resolve_hyperparameters(10, n_epochs=2, batch_size=8, learning_rate_multiplier=5)
    assert (resolved.n_epochs, resolved.batch_size) == (2, 8)
    assert resolved.learning_rate == pytest.approx(5 * BASE_LEARNING_RATE)
    fireworks = resolve_hyperparameters(10, learning_rate=1e-3, learning_rate_multiplier=7)
    assert fireworks.learning_rate == 1e-3 and fireworks.learning_rate_multiplier == pytest.approx(5.0)
    assert resolve_hyperparameters(10).as_openai() == {
        "n_epochs": 10,
        "batch_size": 1,
        "learning_rate_multiplier": 1.0,
    }


def test_every_default_comes_from_one_place() -> None:
    settings = resolve_settings(JobRequest(model="m", training_file="file-x", seed=1), n_examples=10)
    defaults = TrainerConfig()
    assert settings.trainer.learning_rate == defaults.learning_rate == BASE_LEARNING_RATE
    assert settings.trainer.batch_tokens == defaults.batch_tokens
    assert settings.trainer.max_context_length == defaults.max_context_length
    assert (settings.trainer.epochs, settings.trainer.batch_examples) == (10, 1)
    assert settings.lora == LoraSettings()


def test_invalid_explicit_values_are_refused() -> None:
    for fields in ({"n_epochs": 0}, {"batch_size": 0}, {"learning_rate_multiplier": -1.0}):
        with pytest.raises(JobRequestError) as refused:
            resolve_settings(JobRequest(model="m", training_file="file-x", **fields), n_examples=10)  # type: ignore[arg-type]
        assert refused.value.param == "hyperparameters"
