"""One module for several projections that read the same input (q|k|v, gate|up): fewer, larger matmuls.

Fusing matters on CPU: a decode step of a 30-layer model makes 121 linear calls fused instead of 211 unfused,
and each call has a fixed cost that small batches cannot hide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ember.models.quant.packed_weight import PackedWeight


class ConcatLinear(nn.Module):
    """Runs projections that cannot share one weight matrix (different GGUF block formats, or packed next to
    dense) and concatenates their outputs along the feature dimension, as one fused matrix would."""

    def __init__(self, parts: list[nn.Module], out_features: list[int]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.out_features = sum(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)  # [..., sum(out)]


def weight_shape(weight: torch.Tensor | PackedWeight) -> tuple[int, ...]:
    """(out_features, in_features) of a dense or packed weight."""
    return tuple(weight.shape)


def is_packed(weight: torch.Tensor | PackedWeight) -> bool:
    return not isinstance(weight, torch.Tensor)


def make_linear(weights: list[torch.Tensor | PackedWeight], biases: list[torch.Tensor] | None) -> nn.Module:
    """A module computing x @ cat(weights).T + cat(biases) for weights [out_i, in] that share `in`.

    Dense tensors become one nn.Linear (a single nn.Parameter is kept as the same object, so a tied lm_head
    shares the embedding's parameter); packed weights of one block format become one PackedLinear over their
    concatenated rows; any other mix runs its mergeable runs separately and concatenates the outputs.
    """
    if not weights:
        raise ValueError("make_linear needs at least one weight")
    if biases is not None and len(biases) != len(weights):
        raise ValueError(f"make_linear got {len(weights)} weights but {len(biases)} biases")
    shapes = [weight_shape(w) for w in weights]
    for shape in shapes:
        if len(shape) != 2:
            raise ValueError(f"a linear weight must be 2-D [out, in], got shape {shape}")
    in_features = {shape[1] for shape in shapes}
    if len(in_features) != 1:
        raise ValueError(f"fused weights must share in_features, got shapes {shapes}")
    if biases is not None:
        for shape, bias in zip(shapes, biases, strict=True):
            if tuple(bias.shape) != (shape[0],):
                raise ValueError(f"bias of shape {tuple(bias.shape)} does not match weight of shape {shape}")

    runs = _mergeable_runs(weights)
    modules: list[nn.Module] = []
    start = 0
    for run in runs:
        run_weights = weights[start : start + run]
        run_biases = biases[start : start + run] if biases is not None else None
        modules.append(_one_linear(run_weights, run_biases))
        start += run
    if len(modules) == 1:
        return modules[0]
    return ConcatLinear(modules, [shape[0] for shape in shapes])


def _mergeable_runs(weights: list[torch.Tensor | PackedWeight]) -> list[int]:
    """Lengths of consecutive runs that can share one matrix: all dense, or all packed with one qtype."""

    def kind(w: torch.Tensor | PackedWeight) -> str:
        return "dense" if not is_packed(w) else f"packed:{w.qtype}"

    runs: list[int] = []
    previous: str | None = None
    for weight in weights:
        current = kind(weight)
        if current == previous:
            runs[-1] += 1
        else:
            runs.append(1)
        previous = current
    return runs


def _one_linear(weights: list[torch.Tensor | PackedWeight], biases: list[torch.Tensor] | None) -> nn.Module:
    bias = None if biases is None else (biases[0] if len(biases) == 1 else torch.cat(biases))
    if is_packed(weights[0]):
        from ember.models.quant.packed_linear import PackedLinear
        from ember.models.quant.packed_weight import PackedWeight

        packed = weights[0] if len(weights) == 1 else PackedWeight.concat_rows(list(weights))
        return PackedLinear(packed, bias)

    dense = weights[0] if len(weights) == 1 else torch.cat(weights)  # [sum(out), in]
    out_features, in_features = dense.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight = dense if isinstance(dense, nn.Parameter) else nn.Parameter(dense)
    if bias is not None:
        linear.bias = nn.Parameter(bias)
    return linear
