"""The trainer's fast path (frozen base linears, fused single-adapter LoRA, flash attention, chunked loss,
checkpointed layers) against the reference: the unmodified network with layers.py's per-row LoRA and the full
logits of the batch. Same losses and gradients step after step, on fresh random models; packed GGML weights
decoded per call give the fp32 model's results; bf16 base matmuls stay close."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tuning_helpers import good_row

from ember.engine.testing import random_weights, tiny_config, tiny_loaded_model
from ember.lora.layers import TrainableLora, attach_trainable_lora
from ember.models.llama import DecoderModel
from ember.models.loader import LoadedModel
from ember.models.quant.quantize import quantize_weight
from ember.tuning.batching import PackedBatch, pack
from ember.tuning.frozen_linear import FrozenLinear
from ember.tuning.masking import ConversationMasker
from ember.tuning.trainer import LoraTrainer
from ember.tuning.trainer_config import LoraSettings, TrainerConfig

LORA = LoraSettings(rank=4, alpha=8)
LEARNING_RATE = 1e-2


def batches_for(model: LoadedModel) -> list[PackedBatch]:
    """Three packed batches of two or three chats each (several sequences: attention stays inside each)."""
    masker = ConversationMasker.for_model(model)
    rows = [
        good_row(f"Question {i}: what is {i} + {i}?", f"It is {2 * i}, as always. " * (1 + i % 3))
        for i in range(7)
    ]
    examples = [e for i, row in enumerate(rows) for e in masker.tokenize_row(row, i).examples]
    return [pack(examples[0:2]), pack(examples[2:5]), pack(examples[5:7])]


def reference_step(
    model: LoadedModel, lora: TrainableLora, optimizer: torch.optim.Optimizer, batch: PackedBatch
) -> float:
    """The plain loop: per-row LoRA context, full logits, weighted cross-entropy over the trained tokens."""
    optimizer.zero_grad(set_to_none=True)
    hidden = model.network(batch.input_ids, batch.positions, batch.attention(), None, lora=lora.context())
    logits = model.network.compute_logits(hidden)  # [T, V]
    losses = F.cross_entropy(logits, batch.target_ids, reduction="none")  # [T]
    loss = (losses * batch.loss_weights).sum() / batch.num_trained_tokens
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lora.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def trainer_for(model: LoadedModel, base_matmul_dtype: str) -> LoraTrainer:
    config = TrainerConfig(
        learning_rate=LEARNING_RATE,
        lr_schedule="constant",
        batch_tokens=512,
        max_context_length=256,
        loss_chunk_tokens=7,  # several chunks per batch
        activation_checkpoint_min_tokens=1,  # every batch recomputes its layers in backward
        base_matmul_dtype=base_matmul_dtype,
    )
    return LoraTrainer(model, LORA, config, "tiny")


def compare_runs(
    fast_model: LoadedModel, reference_model: LoadedModel, base_matmul_dtype: str, rtol: float
) -> list[tuple[float, float]]:
    """Train both on the same batches; each step's loss must agree within rtol, and every gradient within rtol
    of its largest element (rtol >= 1e-3: only its direction, cosine similarity >= 1 - rtol)."""
    trainer = trainer_for(fast_model, base_matmul_dtype)
    reference = attach_trainable_lora(
        reference_model.network, LORA.rank, LORA.alpha, 0.0, LORA.target_modules, 42
    )
    optimizer = torch.optim.AdamW(reference.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    losses = []
    for batch in batches_for(fast_model):
        fast_loss = trainer._step([batch], LEARNING_RATE).loss
        reference_loss = reference_step(reference_model, reference, optimizer, batch)
        losses.append((fast_loss, reference_loss))
        assert fast_loss == pytest.approx(reference_loss, rel=rtol)
        expected = dict(reference.named_parameters())
        for name, param in trainer.lora.named_parameters():
            assert param.grad is not None, name
            want = expected[name].grad
            assert want is not None
            # float noise is relative to the gradient's scale, not to each (possibly tiny) element
            if rtol < 1e-3:
                torch.testing.assert_close(param.grad, want, rtol=rtol, atol=rtol * float(want.abs().max()))
            elif want.abs().max() > 0:
                assert F.cosine_similarity(param.grad.flatten(), want.flatten(), dim=0) >= 1 - rtol, name
    return losses


def test_the_fast_path_trains_as_the_reference_loop() -> None:
    # qwen2: q/k/v biases and an untied output matrix (the other tests run llama's tied one)
    fast, reference = tiny_loaded_model("qwen2", seed=3), tiny_loaded_model("qwen2", seed=3)
    losses = compare_runs(fast, reference, "fp32", rtol=1e-4)
    assert losses[-1][0] != losses[0][0]  # the steps trained something
    assert isinstance(fast.network.layers[0].mlp.gate_up_proj, FrozenLinear)


def packed_model(qtype: str, seed: int) -> tuple[LoadedModel, LoadedModel]:
    """The same tiny model twice: its linears as GGML blocks of `qtype`, and as the fp32 values those decode to."""
    config = tiny_config("llama")
    weights = random_weights(config, seed)
    packed = {n: quantize_weight(w, qtype) if "proj" in n else w for n, w in weights.items()}
    decoded = {n: w.dequantize() if "proj" in n else w for n, w in packed.items()}  # type: ignore[union-attr]
    models = []
    for tensors, weight_format in ((packed, "packed"), (decoded, "fp32")):
        network = DecoderModel(config)
        network.load_weights(tensors)  # type: ignore[arg-type]
        base = tiny_loaded_model("llama", seed)
        base.network, base.weight_format = network.eval(), weight_format
        models.append(base)
    return models[0], models[1]


def test_packed_base_weights_decoded_per_call_train_as_their_fp32_values() -> None:
    fast, reference = packed_model("Q4_0", seed=5)
    compare_runs(fast, reference, "fp32", rtol=1e-4)
    qkv = fast.network.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, FrozenLinear) and qkv.packed_parts is not None and qkv.dense is None


def test_bf16_base_matmuls_stay_close_to_fp32() -> None:
    fast, reference = tiny_loaded_model("llama", seed=9), tiny_loaded_model("llama", seed=9)
    compare_runs(fast, reference, "bf16", rtol=1e-2)
    assert fast.network.layers[1].self_attn.o_proj.dense.dtype == torch.bfloat16
