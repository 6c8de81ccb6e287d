"""LoRA for training one adapter on every row of the batch: one autograd Function per base projection.

The serving path (layers.py) adds each module's delta through per-row indexing and a zero-filled buffer so one
forward can mix adapters. A training batch has a single adapter on all rows, so here, for a fused projection
(q|k|v, gate|up) with modules i of output columns [o_i, o_i + w_i):

    h = x @ cat(A_i).T                           [T, k*r]  one matmul for every module of the projection
    y[:, o_i : o_i + w_i] += s * h_i @ B_i.T     in place on the base output, no delta tensors

and backward is written out (grad_B_i = s * g_i.T @ h_i, grad_h_i = s * g_i @ B_i, grad_A = grad_h.T @ x,
grad_x = grad_h @ cat(A_i)), saving only x and the small h. The values equal layers.py's up to float rounding
(tested). With LoRA dropout the per-module masks of layers.py apply instead (`training_context`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ember.lora.layers import LayerLora, LoraContext, TrainableLora

Pairs = Mapping[
    tuple[int, str], tuple[torch.Tensor, torch.Tensor]
]  # (layer, module) -> (A [r, in], B [out, r])


class _LoraAddmm(torch.autograd.Function):
    """(y [T, out], x [T, in], scaling, offsets, A_0, B_0, A_1, B_1, ...) -> y with every module's delta added."""

    @staticmethod
    def forward(
        ctx: Any,
        y: torch.Tensor,
        x: torch.Tensor,
        scaling: float,
        offsets: tuple[int, ...],
        *pairs: torch.Tensor,
    ) -> torch.Tensor:
        a_list, b_list = pairs[0::2], pairs[1::2]
        a_cat = torch.cat(a_list)  # [k*r, in]
        h = x @ a_cat.t()  # [T, k*r]
        start = 0
        for offset, a, b in zip(offsets, a_list, b_list, strict=True):
            rank, width = a.shape[0], b.shape[0]
            y[:, offset : offset + width].addmm_(h[:, start : start + rank], b.t(), alpha=scaling)
            start += rank
        ctx.mark_dirty(y)
        ctx.save_for_backward(x, h, a_cat, *b_list)
        ctx.scaling, ctx.offsets = scaling, offsets
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, h, a_cat, *b_list = ctx.saved_tensors
        scaling = ctx.scaling
        grad_h = torch.empty_like(h)  # [T, k*r]
        grads_b = []
        start = 0
        for offset, b in zip(ctx.offsets, b_list, strict=True):
            rank, width = b.shape[1], b.shape[0]
            g = grad[:, offset : offset + width]  # [T, w]
            grad_h[:, start : start + rank] = g @ b  # [T, r]
            grads_b.append((g.t() @ h[:, start : start + rank]).mul_(scaling))  # [w, r]
            start += rank
        grad_h.mul_(scaling)
        grads_a = (grad_h.t() @ x).split(b_list[0].shape[1])  # [k*r, in] -> k x [r, in]
        grad_x = grad_h @ a_cat if ctx.needs_input_grad[1] else None  # [T, in]
        interleaved = [g for pair in zip(grads_a, grads_b, strict=True) for g in pair]
        return (grad, grad_x, None, None, *interleaved)


@dataclass(frozen=True)
class FusedLayerLora(LayerLora):
    """One decoder layer's view of a single trained adapter covering every row."""

    pairs: Pairs = None  # type: ignore[assignment]
    scaling: float = 1.0

    def apply(
        self, y: torch.Tensor, x: torch.Tensor, modules: tuple[str, ...], sizes: tuple[int, ...]
    ) -> torch.Tensor:
        """y [T, sum(sizes)] (the base output, updated in place) plus the adapter's delta of each module."""
        offsets: list[int] = []
        tensors: list[torch.Tensor] = []
        offset = 0
        for module, size in zip(modules, sizes, strict=True):
            pair = self.pairs.get((self.layer_idx, module))
            if pair is not None:
                offsets.append(offset)
                tensors += pair
            offset += size
        if not tensors:
            return y
        return _LoraAddmm.apply(y, x, self.scaling, tuple(offsets), *tensors)


@dataclass(frozen=True)
class FusedLoraContext(LoraContext):
    """A LoraContext whose layers apply one adapter to all rows through _LoraAddmm."""

    pairs: Pairs = None  # type: ignore[assignment]
    scaling: float = 1.0

    def layer(self, layer_idx: int) -> LayerLora:
        return FusedLayerLora(layer_idx, (), self.pairs, self.scaling)


def training_context(lora: TrainableLora) -> LoraContext:
    """The context a training forward passes down: fused, unless dropout is active (then layers.py's path,
    with its own dropout mask per module)."""
    if lora.training and lora.dropout > 0:
        return lora.context()
    return FusedLoraContext((), lora.pairs(), lora.scaling)
