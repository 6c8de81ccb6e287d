"""Tiny random models for the LoRA tests: ember's DecoderModel and a transformers LlamaForCausalLM with the
same weights, and random adapters whose deltas are large enough to change the logits visibly."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ember.engine.testing import random_weights, tiny_config
from ember.lora.adapter import LoraAdapter
from ember.lora.layers import LoraContext
from ember.lora.targets import TARGET_MODULES, module_shapes
from ember.models.attention_metadata import AttentionMetadata
from ember.models.config import ModelConfig
from ember.models.llama import DecoderModel

SMALL_VOCAB = 300


def small_config(**overrides: object) -> ModelConfig:
    return tiny_config("llama", vocab_size=SMALL_VOCAB, **overrides)


def ember_model(config: ModelConfig, seed: int = 0) -> DecoderModel:
    model = DecoderModel(config)
    model.load_weights(random_weights(config, seed))
    return model.eval()


def hf_model(config: ModelConfig, seed: int = 0) -> LlamaForCausalLM:
    """transformers' Llama with exactly the weights ember_model(config, seed) gets."""
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    hf_config._attn_implementation = "eager"
    model = LlamaForCausalLM(hf_config).eval()
    missing, unexpected = model.load_state_dict(random_weights(config, seed), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def random_adapter(
    config: ModelConfig,
    name: str,
    seed: int,
    rank: int = 4,
    alpha: float = 8.0,
    modules: tuple[str, ...] = TARGET_MODULES,
    layers: tuple[int, ...] | None = None,
    use_rslora: bool = False,
) -> LoraAdapter:
    """Non-zero A and B, scaled so each delta is a sizeable fraction of the base projection's output."""
    gen = torch.Generator().manual_seed(seed)
    shapes = module_shapes(config)
    weights = {}
    for layer in layers if layers is not None else range(config.num_layers):
        for module in modules:
            out_features, in_features = shapes[module]
            a = torch.randn(rank, in_features, generator=gen) / in_features**0.5
            b = torch.randn(out_features, rank, generator=gen) / rank**0.5 * 0.5
            weights[(layer, module)] = (a, b)
    return LoraAdapter(name, rank, alpha, modules, weights, use_rslora)


def prompts(lens: list[int], vocab: int, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lens]


def ember_logits(model: DecoderModel, batch: list[list[int]], lora: LoraContext | None) -> torch.Tensor:
    """All sequences flattened into one forward without a KV cache -> logits [sum(lens), vocab]."""
    ids = torch.tensor([t for p in batch for t in p])
    positions = torch.cat([torch.arange(len(p)) for p in batch])
    attn = AttentionMetadata.for_prefill_without_cache([len(p) for p in batch])
    return model.compute_logits(model(ids, positions, attn, None, lora=lora))


def hf_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()
