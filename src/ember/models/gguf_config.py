"""ModelConfig from GGUF metadata (`{arch}.*` keys) and the tensors present in the file."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import torch

from ember.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling


class GGUFConfigError(ValueError):
    """Metadata that does not describe a model ember can run; the loader adds the file name."""


def architecture_of(fields: Mapping[str, Any]) -> str:
    arch = fields.get("general.architecture")
    if arch is None:
        raise GGUFConfigError("metadata lacks general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFConfigError(
            f"unsupported architecture {arch!r}; ember supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return str(arch)


def model_config_from_gguf(
    fields: Mapping[str, Any],
    tensor_names: Collection[str],
    vocab_size: int,
    rope_freqs: torch.Tensor | None,
    bos_token_id: int | None,
    eos_token_ids: tuple[int, ...],
) -> ModelConfig:
    """`vocab_size` comes from the embedding's rows; `rope_freqs` is llama.cpp's per-frequency divisor tensor
    (Llama-3.1 style scaling) when the file has one."""
    arch = architecture_of(fields)

    def required(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in fields:
            raise GGUFConfigError(f"metadata lacks {full}")
        return fields[full]

    hidden = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_kv_heads = int(fields.get(f"{arch}.attention.head_count_kv", num_heads))
    if num_heads <= 0 or num_kv_heads <= 0:
        raise GGUFConfigError(f"head counts must be positive, got {num_heads} and {num_kv_heads}")
    head_dim = int(fields.get(f"{arch}.attention.key_length", hidden // num_heads))
    value_dim = int(fields.get(f"{arch}.attention.value_length", head_dim))
    rope_dim = int(fields.get(f"{arch}.rope.dimension_count", head_dim))
    if value_dim != head_dim:
        raise GGUFConfigError(f"key length {head_dim} differs from value length {value_dim}; not supported")
    if rope_dim != head_dim:
        raise GGUFConfigError(
            f"partial rotary embedding (rope dims {rope_dim} of head dim {head_dim}) is not supported"
        )
    context = int(required("context_length"))
    try:
        return ModelConfig(
            architecture=arch,
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=int(required("feed_forward_length")),
            num_layers=int(required("block_count")),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            max_position_embeddings=context,
            rms_norm_eps=float(required("attention.layer_norm_rms_epsilon")),
            rope_theta=float(fields.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_scaling=_rope_scaling(fields, arch, head_dim, rope_freqs),
            tie_word_embeddings="output.weight" not in tensor_names,
            attention_bias="blk.0.attn_q.bias" in tensor_names,
            qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
            bos_token_id=bos_token_id,
            eos_token_ids=eos_token_ids,
        )
    except ValueError as e:
        raise GGUFConfigError(str(e)) from None


def _rope_scaling(
    fields: Mapping[str, Any], arch: str, head_dim: int, rope_freqs: torch.Tensor | None
) -> RopeScaling | None:
    kind = str(fields.get(f"{arch}.rope.scaling.type", "none"))
    factor = float(fields.get(f"{arch}.rope.scaling.factor", 1.0))
    legacy_linear = fields.get(f"{arch}.rope.scale_linear")
    if kind == "none" and legacy_linear is not None and float(legacy_linear) != 1.0:
        kind, factor = "linear", float(legacy_linear)
    if rope_freqs is not None:
        if kind not in ("none", "linear") or (kind == "linear" and factor != 1.0):
            raise GGUFConfigError(f"rope_freqs tensor combined with rope scaling {kind!r} is not supported")
        theta = float(fields.get(f"{arch}.rope.freq_base", 10000.0))
        return _llama3_scaling_matching(rope_freqs, theta, head_dim)
    if kind == "none" or (kind == "linear" and factor == 1.0):
        return None
    if kind == "linear":
        return RopeScaling(rope_type="linear", factor=factor)
    raise GGUFConfigError(f"rope scaling type {kind!r} is not supported (ember supports linear and llama3)")


# Llama-3 rope scaling is fixed by its factor and the wavelength band [orig/high, orig/low]; every released
# Llama-3.x model uses low 1, high 4, original context 8192 with factor 8 (3.1) or 32 (3.2).
_LLAMA3_CANDIDATES = ((1.0, 4.0, 8192),)


def llama3_rope_divisors(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """What llama.cpp's converter writes to rope_freqs.weight: for each frequency, how much it is divided."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [head_dim/2]
    wavelen = 2 * math.pi / inv_freq
    orig = scaling.original_max_position_embeddings
    low_wavelen, high_wavelen = orig / scaling.low_freq_factor, orig / scaling.high_freq_factor
    smooth = (orig / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    between = 1.0 / ((1 - smooth) / scaling.factor + smooth)
    divisors = torch.where(wavelen > low_wavelen, torch.full_like(wavelen, scaling.factor), between)
    return torch.where(wavelen < high_wavelen, torch.ones_like(wavelen), divisors)


def _llama3_scaling_matching(rope_freqs: torch.Tensor, theta: float, head_dim: int) -> RopeScaling:
    if rope_freqs.numel() != head_dim // 2:
        raise GGUFConfigError(f"rope_freqs has {rope_freqs.numel()} values, expected {head_dim // 2}")
    factor = float(rope_freqs.max())
    for low, high, orig in _LLAMA3_CANDIDATES:
        scaling = RopeScaling("llama3", factor, low, high, orig)
        expected = llama3_rope_divisors(head_dim, theta, scaling)
        if torch.allclose(rope_freqs.double().reshape(-1), expected, rtol=1e-4, atol=1e-4):
            return scaling
    raise GGUFConfigError(
        f"rope_freqs tensor does not match Llama-3 rope scaling (factor {factor}, low 1, high 4, original 8192)"
    )
