"""Random PEFT LoRA adapter folders for the tiny test model, written to disk as a user's would be."""

from __future__ import annotations

from pathlib import Path

import torch
from fine_tuning_server import TINY_MODEL

from ember.lora.adapter import LoraAdapter, save_peft_adapter
from ember.lora.targets import module_shapes
from ember.models.config import ModelConfig


def write_adapter(
    folder: Path,
    config: ModelConfig,
    seed: int,
    rank: int = 4,
    modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    base_model: str = TINY_MODEL,
) -> Path:
    """A random PEFT adapter whose deltas are large enough to change greedy tokens."""
    gen = torch.Generator().manual_seed(seed)
    shapes = module_shapes(config)
    weights = {}
    for layer in range(config.num_layers):
        for module in modules:
            out_features, in_features = shapes[module]
            a = torch.randn(rank, in_features, generator=gen) / in_features**0.5
            b = torch.randn(out_features, rank, generator=gen) / rank**0.5
            weights[(layer, module)] = (a, b)
    save_peft_adapter(LoraAdapter(folder.name, rank, 2.0 * rank, modules, weights), str(folder), base_model)
    return folder
