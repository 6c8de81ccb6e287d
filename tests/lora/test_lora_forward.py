"""Per-row multi-adapter forward and the trainable LoRA layers on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_helpers import ember_logits, ember_model, prompts, random_adapter, small_config

from ember.engine.testing import random_weights
from ember.lora.errors import LoraError
from ember.lora.layers import LoraContext, attach_trainable_lora
from ember.models.attention_metadata import AttentionMetadata
from ember.models.llama import DecoderModel

LENS = [5, 8, 3, 6, 4]


@pytest.mark.parametrize("grad_mode", [False, True], ids=["inference", "autograd"])
def test_mixed_batch_equals_each_sequence_alone(grad_mode: bool) -> None:
    """Base rows, two adapters, and one adapter on non-adjacent sequences, all in one forward."""
    config = small_config()
    model = ember_model(config)
    first = random_adapter(config, "first", seed=1)
    second = random_adapter(config, "second", seed=2, rank=2, modules=("q_proj", "o_proj", "down_proj"))
    owners = [None, first, second, first, None]
    batch = prompts(LENS, config.vocab_size)
    context = LoraContext.for_batch(list(zip(owners, LENS, strict=True)))
    with torch.inference_mode(not grad_mode), torch.set_grad_enabled(grad_mode):
        mixed = ember_logits(model, batch, context)
        alone = [
            ember_logits(model, [p], None if a is None else LoraContext.for_batch([(a, len(p))]))
            for p, a in zip(batch, owners, strict=True)
        ]
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-5, atol=1e-5)
    base_alone = ember_logits(model, [batch[1]], None).detach()
    assert (alone[1].detach() - base_alone).abs().max() > 0.5  # the adapters really change the output


def test_batch_context_groups_rows_by_adapter() -> None:
    config = small_config()
    first = random_adapter(config, "first", seed=1)
    second = random_adapter(config, "second", seed=2)
    assert LoraContext.for_batch([(None, 3), (None, 2)]) is None
    whole = LoraContext.for_batch([(first, 3), (first, 2)])
    assert whole is not None and [g.rows for g in whole.groups] == [None]
    mixed = LoraContext.for_batch([(first, 2), (None, 1), (second, 2), (first, 1)])
    assert mixed is not None
    rows = [g.rows for g in mixed.groups]
    assert rows[0].tolist() == [0, 1, 5]
    assert rows[1] == slice(3, 5)
    assert [g.scaling for g in mixed.groups] == [first.scaling, second.scaling]


def test_only_lora_parameters_get_gradients_and_training_reduces_loss() -> None:
    config = small_config()
    model = ember_model(config)
    lora = attach_trainable_lora(
        model, rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=0
    )
    assert all(not p.requires_grad for p in model.parameters())
    assert len(list(lora.parameters())) == 2 * 2 * config.num_layers

    batch = prompts([12, 9], config.vocab_size)
    targets = torch.tensor(sum(prompts([12, 9], config.vocab_size, seed=7), []))
    with torch.no_grad():  # B starts at zero: the untrained adapter is the base model
        torch.testing.assert_close(
            ember_logits(model, batch, lora.context()), ember_logits(model, batch, None)
        )

    initial = {name: p.detach().clone() for name, p in lora.named_parameters()}
    optimizer = torch.optim.AdamW(lora.parameters(), lr=2e-2)
    losses = []
    for step in range(12):
        loss = torch.nn.functional.cross_entropy(ember_logits(model, batch, lora.context()), targets)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.lora_B.values())
        if step > 0:  # A's gradient goes through B, which is zero at the very first step (as in PEFT)
            assert all(p.grad.abs().sum() > 0 for p in lora.lora_A.values())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(not torch.equal(p, initial[name]) for name, p in lora.named_parameters())


def test_lora_gradients_match_finite_differences_of_the_frozen_model() -> None:
    """The gradient of one B entry equals the slope of the loss when that entry is nudged."""
    config = small_config()
    model = ember_model(config).double()
    lora = attach_trainable_lora(
        model, rank=2, alpha=4, dropout=0.0, target_modules=["gate_proj"], seed=1
    ).double()
    batch = prompts([6], config.vocab_size)
    targets = torch.tensor(prompts([6], config.vocab_size, seed=3)[0])

    ids = torch.tensor(batch[0])
    attn = AttentionMetadata.for_prefill_without_cache([len(ids)])

    def loss() -> torch.Tensor:
        # compute_logits returns fp32; the tied head in float64 keeps more of the loss's precision
        hidden = model(ids, torch.arange(len(ids)), attn, None, lora=lora.context())  # [T, H]
        return torch.nn.functional.cross_entropy(hidden @ model.embed_tokens.weight.t(), targets)

    loss().backward()
    param = lora.lora_B["layer1_gate_proj"]
    analytic = param.grad[3, 1].item()
    eps = 1e-3  # RMSNorm keeps fp32 statistics even in a float64 model: a small nudge would drown in them
    with torch.no_grad():
        param[3, 1] += eps
        up = loss().item()
        param[3, 1] -= 2 * eps
        down = loss().item()
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-2)


def test_training_works_on_a_packed_base_model() -> None:
    """GGUF blocks have no gradients of their own; LoRA still trains on top of them."""
    import gguf.quants
    from gguf import GGMLQuantizationType

    from ember.models.quant.packed_linear import PackedLinear
    from ember.models.quant.packed_weight import PackedWeight

    config = small_config()
    weights: dict = {}
    for name, tensor in random_weights(config).items():
        if name.endswith("proj.weight"):
            blocks = gguf.quants.quantize(tensor.numpy().astype(np.float32), GGMLQuantizationType.Q8_0)
            weights[name] = PackedWeight("Q8_0", tuple(tensor.shape), torch.from_numpy(blocks))
        else:
            weights[name] = tensor
    model = DecoderModel(config)
    model.load_weights(weights)
    assert isinstance(model.layers[0].self_attn.qkv_proj, PackedLinear)
    lora = attach_trainable_lora(model, 4, 8, 0.0, ["q_proj", "o_proj", "up_proj", "down_proj"], seed=2)
    batch = prompts([10], config.vocab_size)
    targets = torch.tensor(prompts([10], config.vocab_size, seed=8)[0])
    optimizer = torch.optim.AdamW(lora.parameters(), lr=2e-2)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(ember_logits(model, batch, lora.context()), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_dropout_only_in_training_mode() -> None:
    config = small_config()
    model = ember_model(config)
    lora = attach_trainable_lora(model, 4, 8, 0.5, ["q_proj", "up_proj"], seed=0)
    with torch.no_grad():
        for b in lora.lora_B.values():
            b.normal_()
    batch = prompts([6], config.vocab_size)
    with torch.no_grad():
        trained = [ember_logits(model, batch, lora.context()) for _ in range(2)]
        lora.eval()
        evaluated = [ember_logits(model, batch, lora.context()) for _ in range(2)]
    assert not torch.equal(trained[0], trained[1])
    torch.testing.assert_close(evaluated[0], evaluated[1], rtol=0, atol=0)


def test_same_seed_same_init_and_adapter_round_trip() -> None:
    config = small_config()
    first = attach_trainable_lora(ember_model(config), 4, 8, 0.0, ["k_proj", "down_proj"], seed=3)
    again = attach_trainable_lora(ember_model(config), 4, 8, 0.0, ["k_proj", "down_proj"], seed=3)
    other = attach_trainable_lora(ember_model(config), 4, 8, 0.0, ["k_proj", "down_proj"], seed=4)
    key = "layer0_k_proj"
    assert torch.equal(first.lora_A[key], again.lora_A[key])
    assert not torch.equal(first.lora_A[key], other.lora_A[key])
    bound = 1 / config.hidden_size**0.5  # kaiming-uniform with a=sqrt(5), as PEFT initialises A
    assert first.lora_A[key].abs().max() <= bound
    assert all(torch.count_nonzero(b) == 0 for b in first.lora_B.values())

    with torch.no_grad():
        first.lora_B[key].normal_()
    adapter = first.to_adapter("checkpoint")
    assert adapter.target_modules == ("k_proj", "down_proj") and adapter.scaling == 2.0
    assert set(adapter.weights) == {(layer, m) for layer in range(2) for m in ("k_proj", "down_proj")}
    other.load_adapter(adapter)
    assert torch.equal(other.lora_B[key], first.lora_B[key])
    assert torch.equal(other.lora_A[key], first.lora_A[key])
    with pytest.raises(LoraError, match="rank 2"):
        other.load_adapter(random_adapter(config, "r2", seed=1, rank=2, modules=("k_proj", "down_proj")))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rank=0), "rank must be positive"),
        (dict(alpha=0), "alpha must be positive"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(target_modules=["q_proj", "lm_head"]), "unsupported LoRA target module.*lm_head"),
        (dict(target_modules=[]), "at least one target module"),
    ],
)
def test_attach_rejects_bad_settings(kwargs: dict, message: str) -> None:
    settings = dict(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj"], seed=0) | kwargs
    with pytest.raises(LoraError, match=message):
        attach_trainable_lora(ember_model(small_config()), **settings)


def test_training_path_and_serving_path_agree() -> None:
    """The trainable context (one matmul pair per module) and the served adapter (fused q|k|v and gate|up
    pairs with the scaling folded in) compute the same deltas."""
    config = small_config()
    model = ember_model(config)
    lora = attach_trainable_lora(model, 4, 12, 0.3, ["q_proj", "v_proj", "gate_proj", "down_proj"], seed=1)
    with torch.no_grad():
        for b in lora.lora_B.values():
            b.normal_(std=0.3)
    lora.eval()  # no dropout
    batch = prompts([7, 5], config.vocab_size)
    served = lora.to_adapter("served")
    with torch.no_grad():
        training = ember_logits(model, batch, lora.context())
        serving = ember_logits(model, batch, LoraContext.for_batch([(served, 7), (served, 5)]))
    assert (training - ember_logits(model, batch, None)).abs().max() > 0.5
    torch.testing.assert_close(training, serving, rtol=1e-5, atol=1e-5)
