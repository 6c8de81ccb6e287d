"""A model as read from disk, before the network is built: config, named weights, tokenizer, template."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ember.models.config import ModelConfig

if TYPE_CHECKING:
    from ember.models.quant.packed_weight import PackedWeight
    from ember.models.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationDefaults:
    """Defaults the checkpoint ships (generation_config.json or GGUF metadata): the engine's end-of-sequence
    ids, and the sampling values a request gets when it leaves them out (ember.engine.generation_defaults)."""

    eos_token_ids: tuple[int, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None


@dataclass
class Checkpoint:
    """Weights are keyed by Hugging Face parameter names (model.layers.0.self_attn.q_proj.weight, ...),
    in torch layout ([out_features, in_features]); GGUF's q/k row permutation is already undone.
    A value is an fp32 tensor, or a PackedWeight when the GGUF block format is kept as loaded."""

    config: ModelConfig
    weights: dict[str, torch.Tensor | PackedWeight]
    tokenizer: Tokenizer
    chat_template: str | None
    source_path: str
    source_format: str  # "gguf" | "safetensors"
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    quantization: str = "f32"  # what the file holds, for the start-up log: "Q4_1", "bf16", ...
