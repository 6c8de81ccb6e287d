"""The LoRA trainer on tiny random models: it learns a fixed reply, packing changes nothing, and a run resumed
from a checkpoint ends with exactly the adapter of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tuning_helpers import good_row

from ember.engine.testing import tiny_loaded_model
from ember.lora.adapter import load_peft_adapter
from ember.models.loader import LoadedModel
from ember.tuning.batching import micro_batches, pack, plan_batches
from ember.tuning.masking import ConversationMasker, TokenizedExample
from ember.tuning.trainer import (
    LoraTrainer,
    TrainingCallbacks,
    TrainingCancelled,
    TrainingMetrics,
    split_carve_out,
)
from ember.tuning.trainer_config import LoraSettings, TrainerConfig

REPLY = "Purple elephants dance at noon."


def examples_for(model: LoadedModel, replies: list[tuple[str, str]]) -> list[TokenizedExample]:
    masker = ConversationMasker.for_model(model)
    return [e for i, (q, a) in enumerate(replies) for e in masker.tokenize_row(good_row(q, a), i).examples]


def fixed_reply_examples(model: LoadedModel, n: int = 6, reply: str = REPLY) -> list[TokenizedExample]:
    return examples_for(model, [(f"Tell me fact number {i}.", reply) for i in range(n)])


def config(**overrides: object) -> TrainerConfig:
    values: dict[str, object] = dict(
        epochs=4, learning_rate=2e-2, batch_tokens=256, max_context_length=128, seed=7, lr_schedule="constant"
    )
    values.update(overrides)
    return TrainerConfig(**values)  # type: ignore[arg-type]


def test_loss_decreases_and_the_adapter_predicts_the_taught_reply(tmp_path: Path) -> None:
    model = tiny_loaded_model()
    examples = fixed_reply_examples(model)
    trainer = LoraTrainer(model, LoraSettings(rank=8, alpha=16), config(epochs=12), "tiny-llama")
    before = trainer.evaluate(examples)
    losses: list[float] = []
    result = trainer.train(
        examples,
        [],
        output_dir=tmp_path / "adapter",
        callbacks=TrainingCallbacks(on_metrics=lambda m: losses.append(m.train_loss)),
    )
    after = trainer.evaluate(examples)
    assert after.loss < 0.2 * before.loss and losses[-1] < 0.2 * losses[0]
    assert after.mean_token_accuracy == 1.0 and result.final_train_accuracy == 1.0
    assert result.steps == len(losses) and result.epochs_completed == 12

    # Greedy, teacher-forced: the adapted model predicts every token of the reply after the prompt.
    batch = pack(examples[:1])
    trained = batch.loss_weights > 0
    with torch.no_grad():
        hidden = model.network(
            batch.input_ids, batch.positions, batch.attention(), None, lora=trainer.lora.context()
        )
        predicted = model.network.compute_logits(hidden).argmax(-1)
    assert torch.equal(predicted[trained], batch.target_ids[trained])

    saved = load_peft_adapter(str(tmp_path / "adapter"), model.config, "taught")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 8
    for key, (a, b) in result.adapter.weights.items():
        assert torch.equal(saved.weights[key][0], a) and torch.equal(saved.weights[key][1], b)


def test_packed_batch_loss_equals_the_examples_run_alone() -> None:
    model = tiny_loaded_model()
    examples = examples_for(model, [("Hi", "Hello!"), ("What is 2 + 2?", "It is 4, of course.")])
    trainer = LoraTrainer(model, LoraSettings(rank=4, alpha=8), config(), "tiny")
    with torch.no_grad():
        for lora_b in trainer.lora.lora_B.values():
            lora_b.normal_()  # a non-zero adapter, so the LoRA path counts too
        together = float(trainer.token_loss(pack(examples)).weighted_sum)
        alone = sum(float(trainer.token_loss(pack([e])).weighted_sum) for e in examples)
    assert together == pytest.approx(alone, rel=1e-5)


def test_plan_respects_token_and_example_budgets_and_the_seed() -> None:
    model = tiny_loaded_model()
    examples = fixed_reply_examples(model, n=10)
    sizes = [e.num_tokens - 1 for e in examples]
    by_tokens = plan_batches(examples, max_batch_tokens=3 * max(sizes), seed=1)
    assert sorted(i for batch in by_tokens for i in batch) == list(range(10))
    assert all(sum(sizes[i] for i in batch) <= 3 * max(sizes) for batch in by_tokens)
    # OpenAI's batch_size: exactly that many examples per step, however long; micro-batches bound the tokens.
    plan = plan_batches(examples, max_batch_tokens=max(sizes), seed=1, max_batch_examples=3)
    assert [len(batch) for batch in plan] == [3, 3, 3, 1]
    assert sorted(i for batch in plan for i in batch) == list(range(10))
    packs = micro_batches(plan[0], examples, max(sizes))
    assert [i for p in packs for i in p] == plan[0] and all(
        sum(sizes[i] for i in p) <= max(sizes) for p in packs
    )
    assert plan == plan_batches(examples, max(sizes), seed=1, max_batch_examples=3)
    assert plan != plan_batches(examples, max(sizes), seed=2, max_batch_examples=3)
    batch = pack([examples[i] for i in plan[0]])
    assert batch.positions.tolist() == [p for i in plan[0] for p in range(sizes[i])]


def test_resume_from_checkpoint_gives_the_same_adapter(tmp_path: Path) -> None:
    settings = LoraSettings(rank=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj", "down_proj"))
    run_config = config(epochs=3, batch_tokens=128, grad_accumulation=2, lr_schedule="cosine", warmup_steps=2)

    def fresh() -> tuple[LoraTrainer, list[TokenizedExample]]:
        model = tiny_loaded_model()
        return LoraTrainer(model, settings, run_config, "tiny"), fixed_reply_examples(model, n=8)

    trainer, examples = fresh()
    uninterrupted = trainer.train(examples, [], checkpoint_dir=tmp_path / "a")

    trainer, examples = fresh()
    metrics: list[TrainingMetrics] = []
    steps_per_epoch = uninterrupted.steps // 3
    stop_after_epoch_one = TrainingCallbacks(
        on_metrics=metrics.append, should_stop=lambda: len(metrics) == steps_per_epoch + 1
    )
    with pytest.raises(TrainingCancelled):
        trainer.train(examples, [], checkpoint_dir=tmp_path / "b", callbacks=stop_after_epoch_one)
    checkpoints = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert checkpoints == [f"step-{steps_per_epoch:06d}"]  # one epoch done; the extra step is not kept

    trainer, examples = fresh()
    resumed_metrics: list[TrainingMetrics] = []
    resumed = trainer.train(
        examples,
        [],
        checkpoint_dir=tmp_path / "b",
        resume_from=tmp_path / "b" / checkpoints[0],
        callbacks=TrainingCallbacks(on_metrics=resumed_metrics.append),
    )
    assert [m.step for m in resumed_metrics] == list(range(steps_per_epoch + 1, uninterrupted.steps + 1))
    assert resumed.steps == uninterrupted.steps
    for key, (a, b) in uninterrupted.adapter.weights.items():
        assert torch.equal(resumed.adapter.weights[key][0], a)
        assert torch.equal(resumed.adapter.weights[key][1], b)


def test_early_stop_when_validation_loss_rises() -> None:
    model = tiny_loaded_model()
    train = fixed_reply_examples(model, n=6, reply=REPLY)
    contrary = fixed_reply_examples(model, n=4, reply="Green turtles sleep at dawn.")
    run_config = config(epochs=20, early_stop=True, early_stop_patience=2)
    trainer = LoraTrainer(model, LoraSettings(rank=8, alpha=16), run_config, "tiny")
    valid: list[float] = []
    result = trainer.train(
        train,
        contrary,
        callbacks=TrainingCallbacks(
            on_metrics=lambda m: valid.append(m.full_valid_loss) if m.full_valid_loss else None
        ),
    )
    assert result.stopped_early and result.epochs_completed < 20
    assert valid[-1] > min(valid) and valid[-2] > min(valid)  # two evaluations without improvement


def test_learning_rate_warms_up_then_decays() -> None:
    model = tiny_loaded_model()
    run_config = config(epochs=4, learning_rate=1e-2, warmup_steps=2, lr_schedule="linear", min_lr_ratio=0.1)
    trainer = LoraTrainer(model, LoraSettings(rank=2, alpha=2), run_config, "tiny")
    rates: list[float] = []
    trainer.train(
        fixed_reply_examples(model, n=2),
        [],
        callbacks=TrainingCallbacks(on_metrics=lambda m: rates.append(m.learning_rate)),
    )
    assert rates[:2] == pytest.approx([5e-3, 1e-2])
    assert rates[-1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:], strict=False))


def test_carve_out_keeps_the_examples_of_a_row_together() -> None:
    examples = [TokenizedExample([1, 2, 3], [0.0, 1.0, 1.0], row_index=i // 2) for i in range(40)]
    train, held = split_carve_out(
        examples, TrainerConfig(eval_fraction=0.1, max_context_length=16, batch_tokens=16)
    )
    assert len(held) == 4 and len(train) == 36
    assert not {e.row_index for e in held} & {e.row_index for e in train}
    assert split_carve_out(examples[:8], TrainerConfig(max_context_length=16, batch_tokens=16))[1] == []


def test_invalid_settings_are_rejected_with_their_name() -> None:
    with pytest.raises(ValueError, match="batch_tokens"):
        TrainerConfig(batch_tokens=100, max_context_length=2048)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainerConfig(lr_schedule="exp")
    with pytest.raises(ValueError, match="target module"):
        LoraSettings(target_modules=("qkv",))
    with pytest.raises(ValueError, match="base_matmul_dtype"):
        TrainerConfig(base_matmul_dtype="fp16")
    with pytest.raises(ValueError, match="fp32 or packed"):
        model = tiny_loaded_model()
        model.weight_format = "bf16"
        LoraTrainer(model, LoraSettings(), TrainerConfig(), "tiny")
