"""Tiny random models with the default model's real tokenizer, for tests and quick experiments.

Nothing here is downloaded: the tokenizer and chat template come from the embedded default GGUF, the weights
are random, so generations are gibberish but every engine and API path runs for real and fast."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch

from ember.engine.engine_config import EngineConfig
from ember.models.checkpoint import GenerationDefaults
from ember.models.config import ModelConfig
from ember.models.loader import LoadedModel


@functools.cache
def default_tokenizer_and_template() -> tuple[object, str | None]:
    """The default GGUF's tokenizer and chat template (read once per process; both are immutable)."""
    from ember.models.default_model import default_gguf_path
    from ember.models.gguf_loader import load_gguf_tokenizer

    return load_gguf_tokenizer(default_gguf_path())


def tiny_config(architecture: str = "llama", vocab_size: int = 49152, **overrides: object) -> ModelConfig:
    fields: dict[str, object] = dict(
        architecture=architecture,
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=architecture == "llama",
        attention_bias=architecture == "qwen2",
        qk_norm=architecture == "qwen3",
        eos_token_ids=(2,),
    )
    fields.update(overrides)
    return ModelConfig(**fields)  # type: ignore[arg-type]


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights scaled so logits spread over a few units: greedy choices are far from ties, sampling still varies."""
    from ember.models.llama import hf_weight_shapes

    shapes, optional = hf_weight_shapes(config)
    gen = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name in optional and config.tie_word_embeddings:
            continue
        if name.endswith("norm.weight"):
            weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            weights[name] = 0.1 * torch.randn(shape, generator=gen)
        else:
            std = 0.25 if "embed_tokens" in name else 1.0 / math.sqrt(shape[1])
            weights[name] = std * torch.randn(shape, generator=gen)
    return weights


def tiny_loaded_model(architecture: str = "llama", seed: int = 0, **overrides: object) -> LoadedModel:
    from ember.models.llama import DecoderModel

    tokenizer, template = default_tokenizer_and_template()
    config = tiny_config(architecture, **overrides)
    network = DecoderModel(config)
    network.load_weights(random_weights(config, seed))
    network.eval()
    return LoadedModel(
        network=network,
        config=config,
        tokenizer=tokenizer,
        chat_template=template,
        generation=GenerationDefaults(eos_token_ids=config.eos_token_ids),
        name=f"tiny-{architecture}",
        source_path="<random>",
        source_format="random",
        file_quantization="f32",
        weight_format="fp32",
        device=torch.device("cpu"),
        load_seconds=0.0,
    )


def tiny_engine_config(
    num_blocks: int = 256, block_size: int = 16, prompt_lookup: str = "auto", **scheduler: object
) -> EngineConfig:
    """prompt_lookup 'off' for tests that count steps (one token each) or need a preemption: speculative
    decoding yields several tokens per step (the server's default, 'auto', drafts when the output repeats)."""
    from ember.engine.engine_config import CacheConfig, SchedulerConfig
    from ember.engine.speculation.config import SpeculationConfig

    sched = {"max_num_seqs": 32, "max_num_batched_tokens": 256, "max_model_len": 1024, **scheduler}
    return EngineConfig(
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks),
        scheduler=SchedulerConfig(**sched),  # type: ignore[arg-type]
        speculation=SpeculationConfig(prompt_lookup=prompt_lookup),
    )


def write_tiny_hf_folder(
    folder: Path, max_position_embeddings: int = 512, seed: int = 3, **overrides: object
) -> Path:
    """A 2-layer random Llama saved as a Hugging Face folder (config.json, safetensors, tokenizer files with the
    default model's tokenizer and chat template), for code that loads models from disk: jobs, workers.
    `overrides` change tiny_config's sizes (hidden_size, intermediate_size, heads, ...)."""
    from safetensors.torch import save_file

    tokenizer, template = default_tokenizer_and_template()
    config = tiny_config("llama", max_position_embeddings=max_position_embeddings, **overrides)
    folder.mkdir(parents=True)
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(hf_config))
    save_file(random_weights(config, seed=seed), str(folder / "model.safetensors"))
    tokenizer._backend.save(str(folder / "tokenizer.json"))  # type: ignore[attr-defined]
    tokenizer_config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder
