"""The model's weight GEMMs alone: the ceiling an engine step is measured against."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def linear_modules(network: nn.Module) -> list[nn.Module]:
    """Every weight matmul a decode step makes (fused projections count once, the lm_head included)."""
    from ember.models.quant.packed_linear import PackedLinear

    return [m for m in network.modules() if isinstance(m, nn.Linear | PackedLinear)]


def _in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.weight.shape[1]


@torch.inference_mode()
def gemm_only_tokens_per_s(network: nn.Module, batch: int, repeats: int = 5) -> float:
    """tokens/s if a step cost nothing but its linear layers, for `batch` tokens per step."""
    modules = linear_modules(network)
    dtype = next(p.dtype for p in network.parameters() if p.is_floating_point())
    inputs = [torch.randn(batch, _in_features(m), dtype=dtype) for m in modules]
    for m, x in zip(modules, inputs, strict=True):  # warm-up: first calls allocate
        m(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for m, x in zip(modules, inputs, strict=True):
            m(x)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)
