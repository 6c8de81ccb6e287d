"""LoRA DPO on a tiny random model: the loss is the DPO paper's formula, sequence log-probabilities sum the
reply's tokens only (chunked or not), the reference is the base model with the adapter off, and a short run
raises the preferred-over-non-preferred log-probability margin on held-out pairs; a resumed run ends with the
adapter of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ember.engine.testing import tiny_loaded_model
from ember.models.loader import LoadedModel
from ember.tuning.dpo_loss import dpo_loss, sequence_logprobs
from ember.tuning.dpo_trainer import DpoMetrics, DpoTrainer
from ember.tuning.masking import ConversationMasker
from ember.tuning.preference_data import PreferencePair, pack_pairs, tokenize_pair
from ember.tuning.trainer import TrainingCallbacks, TrainingCancelled
from ember.tuning.trainer_config import DpoSettings, LoraSettings, TrainerConfig

PREFERRED = "Certainly! Here is a clear answer."
NON_PREFERRED = "no"


def preference_row(question: str, preferred: str = PREFERRED, rejected: str = NON_PREFERRED) -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def pairs_for(model: LoadedModel, questions: list[str]) -> list[PreferencePair]:
    masker = ConversationMasker.for_model(model)
    pairs = [tokenize_pair(preference_row(q), masker, i) for i, q in enumerate(questions)]
    assert all(p is not None for p in pairs)
    return pairs  # type: ignore[return-value]


def config(**overrides: object) -> TrainerConfig:
    values: dict[str, object] = dict(
        epochs=3, learning_rate=5e-3, batch_tokens=256, max_context_length=128, seed=3, lr_schedule="constant"
    )
    values.update(overrides)
    return TrainerConfig(**values)  # type: ignore[arg-type]


def margin(trainer: DpoTrainer, pairs: list[PreferencePair]) -> float:
    """Mean (log pi(preferred) - log pi(non-preferred)) under the adapted policy."""
    totals = trainer.evaluate_pairs(pairs)
    return (totals.preferred_logps - totals.non_preferred_logps) / totals.pairs


def test_dpo_loss_is_the_papers_formula() -> None:
    policy = torch.tensor([[-3.0, -5.0], [-4.0, -2.0]])
    reference = torch.tensor([[-3.5, -4.0], [-4.0, -2.5]])
    terms = dpo_loss(policy, reference, beta=0.2)
    expected = -F.logsigmoid(0.2 * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])))
    torch.testing.assert_close(terms.losses, expected)
    torch.testing.assert_close(terms.preferred_rewards, 0.2 * (policy[:, 0] - reference[:, 0]))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(policy, reference, beta=0.0)


def test_sequence_logprobs_sum_the_reply_tokens_only_in_any_chunk_size() -> None:
    model = tiny_loaded_model()
    pairs = pairs_for(model, ["What is the sky?", "Name a fruit."])
    batch = pack_pairs(pairs)
    network = model.network
    with torch.no_grad():
        hidden = network(batch.input_ids, batch.positions, batch.attention(), None)
        full = torch.log_softmax(network.compute_logits(hidden), dim=-1)
    token_logps = full.gather(1, batch.target_ids[:, None]).squeeze(1) * (batch.loss_weights > 0)
    expected = torch.stack([part.sum() for part in token_logps.split(batch.seq_lens)])
    for chunk in (1, 3, 512):
        got = sequence_logprobs(hidden, batch, network.compute_logits, chunk)
        torch.testing.assert_close(got, expected)
    # Each side trains exactly its reply (+ end of turn): the short rejected reply has fewer tokens.
    assert pairs[0].preferred.num_trained_tokens > pairs[0].non_preferred.num_trained_tokens >= 2


def test_short_dpo_run_raises_the_margin_on_held_out_pairs(tmp_path: Path) -> None:
    model = tiny_loaded_model()
    train = pairs_for(model, [f"Question number {i}: what do you say?" for i in range(8)])
    held_out = pairs_for(model, ["A new question nobody asked before.", "Tell me something else."])
    trainer = DpoTrainer(
        model, LoraSettings(rank=8, alpha=16), config(batch_examples=4), "tiny-llama", DpoSettings(0.1)
    )
    # Adapter off = reference: before training the policy is the reference, every reward is 0.
    reference = trainer.reference_logprobs(held_out)
    start = trainer.evaluate_pairs(held_out, reference)
    assert abs(start.margin) < 1e-4 and start.loss == pytest.approx(len(held_out) * 0.6931, rel=1e-3)
    before = margin(trainer, held_out)

    metrics: list[DpoMetrics] = []
    result = trainer.train_pairs(
        train, [], output_dir=tmp_path / "adapter", callbacks=TrainingCallbacks(on_metrics=metrics.append)
    )
    after = margin(trainer, held_out)
    assert after > before + 1.0, (before, after)
    # The reference stayed the base model: the adapter's weights never entered it.
    torch.testing.assert_close(
        trainer.reference_logprobs(held_out)[id(held_out[0])], reference[id(held_out[0])]
    )
    assert [m.step for m in metrics] == list(range(1, 7)) and result.steps == 6
    first, last = metrics[0].values, metrics[-1].values
    assert first["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 1
    assert last["train_loss"] < first["train_loss"] and last["train_reward_margin"] > 0
    assert last["train_reward_accuracy"] == 1.0 and result.final_reward_accuracy == 1.0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_resumed_dpo_run_ends_with_the_uninterrupted_adapter(tmp_path: Path) -> None:
    questions = [f"Question number {i}?" for i in range(6)]
    settings = LoraSettings(rank=4, alpha=8, dropout=0.1)

    def trainer() -> tuple[DpoTrainer, list[PreferencePair]]:
        model = tiny_loaded_model()
        return DpoTrainer(
            model, settings, config(batch_examples=2, epochs=2), "tiny", DpoSettings()
        ), pairs_for(model, questions)

    whole, pairs = trainer()
    expected = whole.train_pairs(pairs, []).adapter

    paused, pairs = trainer()
    steps: list[int] = []
    pause_after_four = TrainingCallbacks(
        on_metrics=lambda m: steps.append(m.step),
        should_stop=lambda: len(steps) >= 4,
        pause_on_stop=lambda: True,
    )
    with pytest.raises(TrainingCancelled):
        paused.train_pairs(pairs, [], checkpoint_dir=tmp_path, callbacks=pause_after_four)
    # 3 steps an epoch: the epoch's checkpoint, then the pause's
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000003", "step-000004"]

    resumed, pairs = trainer()
    result = resumed.train_pairs(pairs, [], resume_from=tmp_path / "step-000004")
    for key, (a, b) in expected.weights.items():
        torch.testing.assert_close(result.adapter.weights[key][0], a)
        torch.testing.assert_close(result.adapter.weights[key][1], b)


def test_validation_pairs_are_evaluated_and_can_stop_the_run_early() -> None:
    model = tiny_loaded_model()
    train = pairs_for(model, [f"Question number {i}?" for i in range(4)])
    held_out = pairs_for(model, ["Something new?", "Anything else?"])
    settings = config(batch_examples=2, epochs=4, eval_every_steps=3)
    metrics: list[DpoMetrics] = []
    trainer = DpoTrainer(model, LoraSettings(rank=4, alpha=8), settings, "tiny", DpoSettings())
    trainer.train_pairs(train, held_out, callbacks=TrainingCallbacks(on_metrics=metrics.append))
    with_valid = [m.step for m in metrics if "valid_loss" in m.values]
    with_full = [m.step for m in metrics if "full_valid_loss" in m.values]
    assert with_valid == [3, 6] and with_full == [2, 4, 6, 8]  # every 3 steps; each epoch's end
    assert all(0.0 <= m.values["full_valid_reward_accuracy"] <= 1.0 for m in metrics if m.step in with_full)
    assert metrics[-1].values["full_valid_loss"] < metrics[1].values["full_valid_loss"]

    # A validation loss that cannot improve (rejected replies the policy learns to prefer) stops the run.
    flipped = [PreferencePair(p.non_preferred, p.preferred, p.row_index) for p in held_out]
    early = DpoTrainer(
        tiny_loaded_model(), LoraSettings(rank=4, alpha=8), config(batch_examples=2, epochs=4, early_stop=True),
        "tiny", DpoSettings(),
    )  # fmt: skip
    result = early.train_pairs(train, flipped)
    assert result.stopped_early and result.epochs_completed < 4


def test_a_job_whose_policy_prefers_little_gets_a_warning() -> None:
    from ember.tuning.dpo_job import dpo_result_warning
    from ember.tuning.dpo_trainer import DpoResult

    def result(accuracy: float | None) -> DpoResult:
        return DpoResult(None, 1, 1, 1, 1, 0.7, None, None, False, final_reward_accuracy=accuracy)  # type: ignore[arg-type]

    warning = dpo_result_warning(result(0.25))
    assert warning is not None and "reward accuracy is 0.25" in warning
    assert dpo_result_warning(result(0.75)) is None and dpo_result_warning(result(None)) is None
