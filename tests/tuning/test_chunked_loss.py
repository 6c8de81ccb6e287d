"""The chunked cross-entropy equals the full-logits one, in value, argmax hits and gradients, on random inputs;
and the trainer's activation-checkpointed forward gives the same loss and adapter gradients as the plain one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ember.engine.testing import tiny_loaded_model
from ember.tuning.batching import pack
from ember.tuning.chunked_loss import chunked_cross_entropy
from ember.tuning.masking import TokenizedExample
from ember.tuning.trainer import LoraTrainer
from ember.tuning.trainer_config import LoraSettings, TrainerConfig


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_loss_matches_full_logits(chunk: int) -> None:
    generator = torch.Generator().manual_seed(chunk)
    n, hidden_size, vocab = 50, 16, 300
    hidden = torch.randn(n, hidden_size, generator=generator, dtype=torch.float64)
    head = torch.randn(vocab, hidden_size, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, vocab, (n,), generator=generator)
    weights = torch.rand(n, generator=generator, dtype=torch.float64) + 0.5
    targets[:5] = (hidden[:5] @ head.T).argmax(-1)  # some hits for the accuracy count

    full_hidden = hidden.clone().requires_grad_()
    full_head = head.clone().requires_grad_()
    logits = full_hidden @ full_head.T  # [N, V], all at once
    expected = (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
    expected.backward()
    expected_hits = int((logits.argmax(-1) == targets).sum())

    chunked_hidden = hidden.clone().requires_grad_()
    chunked_head = head.clone().requires_grad_()
    loss = chunked_cross_entropy(chunked_hidden, targets, weights, lambda h: h @ chunked_head.T, chunk)
    loss.weighted_sum.backward()

    assert float(loss.weighted_sum.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert (loss.correct, loss.count) == (expected_hits, n) and expected_hits >= 5
    assert chunked_hidden.grad is not None and full_hidden.grad is not None
    assert torch.allclose(chunked_hidden.grad, full_hidden.grad, rtol=1e-10, atol=1e-12)
    assert chunked_head.grad is not None and full_head.grad is not None
    assert torch.allclose(chunked_head.grad, full_head.grad, rtol=1e-10, atol=1e-12)


def test_checkpointed_layers_give_the_same_loss_and_gradients() -> None:
    model = tiny_loaded_model()
    generator = torch.Generator().manual_seed(3)
    examples = [
        TokenizedExample(
            torch.randint(0, model.config.vocab_size, (length,), generator=generator).tolist(),
            [0.0] * (length // 2) + [1.0] * (length - length // 2),
            row,
        )
        for row, length in enumerate((9, 14, 6))
    ]
    batch = pack(examples)
    grads = []
    losses = []
    for checkpoint_from, chunk in ((None, 10_000), (0, 4)):
        config = TrainerConfig(  # fp32 base matmuls: bf16 would round sums taken in another order differently
            seed=1,
            activation_checkpoint_min_tokens=checkpoint_from,
            loss_chunk_tokens=chunk,
            base_matmul_dtype="fp32",
        )
        trainer = LoraTrainer(model, LoraSettings(rank=4, alpha=8), config, "tiny")
        with torch.no_grad():
            for lora_b in trainer.lora.lora_B.values():
                lora_b.normal_(generator=torch.Generator().manual_seed(5))  # a non-zero adapter
        terms = trainer.token_loss(batch)
        terms.weighted_sum.backward()
        losses.append(float(terms.weighted_sum.detach()))
        grads.append([p.grad.clone() for p in trainer.lora.parameters() if p.grad is not None])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert len(grads[0]) == len(grads[1]) > 0
    for plain, checkpointed in zip(grads[0], grads[1], strict=True):
        scale = float(plain.abs().max())  # fp32 sums in another order: compare to the tensor's magnitude
        assert torch.allclose(plain, checkpointed, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_a_frozen_output_layer_takes_the_gradient_in_forward_and_it_equals_the_full_logits_one(
    chunk: int,
) -> None:
    """The trainer's path (the output layer frozen): loss, hits and the hidden states' gradient equal the fp64
    full-logits reference, also when the loss is scaled afterwards (as the trainer divides by trained tokens)."""
    generator = torch.Generator().manual_seed(100 + chunk)
    n, hidden_size, vocab = 50, 16, 300
    hidden = torch.randn(n, hidden_size, generator=generator, dtype=torch.float64)
    head = torch.randn(vocab, hidden_size, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, vocab, (n,), generator=generator)
    weights = torch.rand(n, generator=generator, dtype=torch.float64) + 0.5
    weights[::5] = 0.0  # weight-0 positions still count their hits, as in the default path
    targets[:5] = (hidden[:5] @ head.T).argmax(-1)

    full_hidden = hidden.clone().requires_grad_()
    logits = full_hidden @ head.T  # [N, V]
    expected = (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
    (expected / 37.0).backward()
    expected_hits = int((logits.argmax(-1) == targets).sum())

    chunked_hidden = hidden.clone().requires_grad_()
    loss = chunked_cross_entropy(
        chunked_hidden, targets, weights, lambda h: h @ head.T, chunk, frozen_output=True
    )
    (loss.weighted_sum / 37.0).backward()

    assert float(loss.weighted_sum.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert (loss.correct, loss.count) == (expected_hits, n) and expected_hits >= 5
    assert chunked_hidden.grad is not None and full_hidden.grad is not None
    assert torch.allclose(chunked_hidden.grad, full_hidden.grad, rtol=1e-10, atol=1e-14)
