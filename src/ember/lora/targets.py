"""Which projections a LoRA adapter may target, by their Hugging Face names, and their shapes."""

from __future__ import annotations

from ember.models.config import ModelConfig

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
TARGET_MODULES = ATTENTION_MODULES + MLP_MODULES


def parent_of(module: str) -> str:
    """The HF submodule a projection lives in: `self_attn` or `mlp`."""
    if module in ATTENTION_MODULES:
        return "self_attn"
    if module in MLP_MODULES:
        return "mlp"
    raise ValueError(f"unknown LoRA target module {module!r}; ember supports {', '.join(TARGET_MODULES)}")


def module_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every projection LoRA can target, the same in each layer."""
    hidden = config.hidden_size
    q_size = config.num_heads * config.head_dim
    kv_size = config.num_kv_heads * config.head_dim
    inter = config.intermediate_size
    return {
        "q_proj": (q_size, hidden),
        "k_proj": (kv_size, hidden),
        "v_proj": (kv_size, hidden),
        "o_proj": (hidden, q_size),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }


def check_target_modules(modules: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The modules in canonical order without duplicates; ValueError naming any module ember lacks."""
    unknown = [m for m in modules if m not in TARGET_MODULES]
    if unknown:
        raise ValueError(
            f"unsupported LoRA target module(s) {', '.join(map(repr, unknown))}; "
            f"ember supports {', '.join(TARGET_MODULES)}"
        )
    if not modules:
        raise ValueError("a LoRA adapter needs at least one target module")
    return tuple(m for m in TARGET_MODULES if m in modules)
