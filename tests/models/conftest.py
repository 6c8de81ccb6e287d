"""Tiny random transformers models (the reference) and our DecoderModel loaded with the same weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ember.models.config import ModelConfig
from ember.models.hf_loader import model_config_from_hf
from ember.models.llama import DecoderModel

_COMMON: dict[str, Any] = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (config class, model class, overrides of _COMMON)
VARIANTS: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "llama_rope_llama3": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    "llama_rope_linear": (LlamaConfig, LlamaForCausalLM, dict(rope_scaling=dict(type="linear", factor=4.0))),
    "llama_tied_mha": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "llama_attention_bias": (LlamaConfig, LlamaForCausalLM, dict(attention_bias=True)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=32)),
}


@dataclass
class TinyModel:
    hf: PreTrainedModel  # the transformers reference, fp32, eval mode
    config: ModelConfig
    ours: DecoderModel

    def hf_logits(self, ids: list[int], position_offset: int = 0) -> torch.Tensor:
        """[len(ids), vocab] logits of transformers on one sequence alone."""
        positions = torch.arange(position_offset, position_offset + len(ids))[None]
        with torch.no_grad():
            return self.hf(torch.tensor([ids]), position_ids=positions).logits[0].float()


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits vary a lot between tokens (the default init makes them nearly flat)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.15 * noise)


def build_hf_model(variant: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    config_cls, model_cls, extra = VARIANTS[variant]
    hf_config = config_cls(**{**_COMMON, **extra, **overrides})
    hf_config._attn_implementation = "eager"
    model = model_cls(hf_config).eval()
    randomize(model, seed)
    return model


def build_tiny(variant: str, seed: int = 0) -> TinyModel:
    hf = build_hf_model(variant, seed)
    config = model_config_from_hf(hf.config.to_dict(), f"<{variant}>")
    ours = DecoderModel(config)
    ours.load_weights({name: t.detach().clone() for name, t in hf.state_dict().items()})
    ours.eval()
    return TinyModel(hf=hf, config=config, ours=ours)


@pytest.fixture(scope="module")
def tiny_model() -> Callable[[str], TinyModel]:
    """tiny_model(variant) -> a cached TinyModel, shared by the tests of one module."""
    cache: dict[str, TinyModel] = {}

    def get(variant: str) -> TinyModel:
        if variant not in cache:
            cache[variant] = build_tiny(variant)
        return cache[variant]

    return get


@pytest.fixture(scope="module")
def make_hf_model() -> Callable[..., PreTrainedModel]:
    """make_hf_model(variant, seed=0, **config_overrides) -> a fresh random transformers model."""
    return build_hf_model
