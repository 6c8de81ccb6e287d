"""Cross-entropy over the vocabulary without the [N, vocab] logits of a whole batch.

A 2048-token row of a 49k-vocabulary model has 400 MB of fp32 logits, and their softmax gradient as much
again; a packed batch of several rows multiplies that. Here the trained positions are taken `chunk` at a time:
each chunk's logits are computed, reduced to its weighted loss and its correct-prediction count, and dropped;
backward recomputes them one chunk at a time (activation checkpointing of the output layer), so at most one
chunk's logits exist at any moment (the last chunk's are kept: backward begins with them). Values and gradients equal the full-logits loss (tested).

With a frozen output layer (training: LoRA never targets it) the loss is a sum over chunks whose only trainable
input is the hidden states, so each chunk's gradient with respect to them is taken in the forward pass while its
logits exist ([n, H], a few MB for the whole batch) and backward only scales it: no chunk's logits are computed
twice. That saves (chunks - 1) output-layer matmuls of [n, H] x [H, vocab] a batch (a quarter of the output
layer's cost on a 2048-token row), at the same peak memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class TokenLoss:
    """What one batch's trained positions give: sum(weight * cross-entropy) and how many the model predicts."""

    weighted_sum: torch.Tensor  # [] fp32, differentiable
    correct: int  # positions whose argmax is the target
    count: int  # trained positions


def chunked_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    chunk: int,
    frozen_output: bool = False,
) -> TokenLoss:
    """hidden [N, H] at trained positions, targets [N], weights [N] -> TokenLoss; at most `chunk` rows of logits
    at a time (also in backward, when autograd is on). `frozen_output`: nothing in `compute_logits` trains, so
    only `hidden` gets a gradient, taken chunk by chunk in the forward pass (a trainable output layer would get
    none: leave it False then)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    if frozen_output and torch.is_grad_enabled() and hidden.requires_grad:
        total, hits = _FrozenOutputCrossEntropy.apply(hidden, targets, weights, compute_logits, chunk)
        return TokenLoss(total, int(hits), int(hidden.shape[0]))
    total = hidden.new_zeros((), dtype=torch.float32)
    correct = 0
    for start in range(0, hidden.shape[0], chunk):
        piece = slice(start, start + chunk)
        # The last chunk keeps its logits for backward instead of recomputing them: backward starts with it, so
        # the peak is the same, and a batch of one chunk (short rows) saves an output-matrix matmul.
        last = start + chunk >= hidden.shape[0]
        if torch.is_grad_enabled() and hidden.requires_grad and not last:
            loss, hits = checkpoint(
                _chunk_loss,
                hidden[piece],
                targets[piece],
                weights[piece],
                compute_logits,
                use_reentrant=False,
            )
        else:
            loss, hits = _chunk_loss(hidden[piece], targets[piece], weights[piece], compute_logits)
        total = total + loss
        correct += int(hits)
    return TokenLoss(total, correct, int(hidden.shape[0]))


class _FrozenOutputCrossEntropy(torch.autograd.Function):
    """sum(weight * cross-entropy) over chunks of `hidden`, its gradient computed in forward (see the module
    docstring); the argmax hits come out beside it, without a gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        compute_logits: Callable[[torch.Tensor], torch.Tensor],
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grad_hidden = torch.empty_like(hidden)  # [N, H]: d(sum of chunk losses) / d hidden
        losses: list[torch.Tensor] = []
        hits = torch.zeros((), dtype=torch.int64)
        for start in range(0, hidden.shape[0], chunk):
            piece = slice(start, start + chunk)
            with torch.enable_grad():  # autograd is off inside a Function's forward
                piece_hidden = hidden[piece].detach().requires_grad_()  # [n, H]
                loss, piece_hits = _chunk_loss(piece_hidden, targets[piece], weights[piece], compute_logits)
                (grad_hidden[piece],) = torch.autograd.grad(loss, piece_hidden)
            losses.append(loss.detach())
            hits += piece_hits
        ctx.save_for_backward(grad_hidden)
        ctx.mark_non_differentiable(hits)
        return torch.stack(losses).sum(), hits

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_total: torch.Tensor, grad_hits: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad_hidden * grad_total, None, None, None, None  # the loss is a plain sum: linear in it


def chunked_target_logprobs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    chunk: int,
) -> torch.Tensor:
    """hidden [N, H], targets [N] -> log p(target) [N] fp32, at most `chunk` rows of logits at a time (also in
    backward): what a sequence's log-probability sums (DPO)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    pieces = []
    for start in range(0, hidden.shape[0], chunk):
        piece = slice(start, start + chunk)
        last = start + chunk >= hidden.shape[0]  # kept, not recomputed: as in chunked_cross_entropy
        if torch.is_grad_enabled() and hidden.requires_grad and not last:
            pieces.append(
                checkpoint(
                    _chunk_logprobs, hidden[piece], targets[piece], compute_logits, use_reentrant=False
                )
            )
        else:
            pieces.append(_chunk_logprobs(hidden[piece], targets[piece], compute_logits))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def _chunk_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, compute_logits: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    return -F.cross_entropy(compute_logits(hidden), targets, reduction="none")  # [n]


def _chunk_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = compute_logits(hidden)  # [n, V] fp32
    losses = F.cross_entropy(logits, targets, reduction="none")  # [n]
    hits = (logits.detach().argmax(dim=-1) == targets).sum()  # [] int64, no gradient
    return (losses * weights).sum(), hits
