"""PEFT's adapter_config.json: the subset ember serves, read strictly, and written so PEFT loads it back."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from ember.lora.errors import LoraError
from ember.lora.targets import TARGET_MODULES, check_target_modules

CONFIG_FILE = "adapter_config.json"

# PEFT options that change what the weights mean; ember refuses an adapter that turns any of them on rather
# than serving something different from what was trained. Value: why, for the message.
_UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "modules_to_save": "fully trained extra modules (modules_to_save)",
    "lora_bias": "trained LoRA biases (lora_bias)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable token embeddings (trainable_token_indices)",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "fan_in_fan_out": "transposed (Conv1D-style) weights (fan_in_fan_out)",
    "megatron_config": "Megatron parallel layers",
    "arrow_config": "Arrow routing",
}


@dataclass(frozen=True)
class PeftLoraConfig:
    """What ember takes from adapter_config.json."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] | None  # None: given as a regex; the weight file then says which
    use_rslora: bool
    base_model_name: str | None
    layers_to_transform: tuple[int, ...] | None


def read_peft_config(folder: str) -> PeftLoraConfig:
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise LoraError(f"{folder}: no {CONFIG_FILE}; a PEFT LoRA adapter folder needs one")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise LoraError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise LoraError(f"{path}: expected a JSON object")
    return parse_peft_config(raw, path)


def parse_peft_config(raw: dict[str, Any], where: str) -> PeftLoraConfig:
    peft_type = raw.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise LoraError(f"{where}: peft_type {peft_type!r} is not supported; ember serves LORA adapters")
    task = raw.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise LoraError(f"{where}: task_type {task!r} is not supported; ember serves CAUSAL_LM adapters")
    for key, what in _UNSUPPORTED.items():
        if raw.get(key):
            raise LoraError(f"{where}: {what} is not supported ({key}={raw[key]!r})")
    bias = raw.get("bias", "none")
    if bias != "none":
        raise LoraError(f"{where}: bias={bias!r} trains base-model biases, which ember does not support")
    rank = raw.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise LoraError(f"{where}: r must be a positive integer, got {rank!r}")
    alpha = raw.get("lora_alpha", 8)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise LoraError(f"{where}: lora_alpha must be a positive number, got {alpha!r}")
    return PeftLoraConfig(
        rank=rank,
        alpha=float(alpha),
        target_modules=_target_modules(raw.get("target_modules"), where),
        use_rslora=bool(raw.get("use_rslora", False)),
        base_model_name=raw.get("base_model_name_or_path") or None,
        layers_to_transform=_layers(raw.get("layers_to_transform"), where),
    )


def _target_modules(value: Any, where: str) -> tuple[str, ...] | None:
    if isinstance(value, str):
        if value in TARGET_MODULES:
            return (value,)
        try:
            re.compile(value)
        except re.error as exc:
            raise LoraError(
                f"{where}: target_modules {value!r} is neither a module name nor a regex"
            ) from exc
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise LoraError(f"{where}: target_modules must be a list of module names, got {value!r}")
    # PEFT matches a name either exactly or as the last dotted component ("self_attn.q_proj" -> "q_proj").
    names = [m.rsplit(".", 1)[-1] for m in value]
    try:
        return check_target_modules(names)
    except ValueError as exc:
        raise LoraError(f"{where}: {exc}") from exc


def _layers(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return tuple(value)
    raise LoraError(f"{where}: layers_to_transform must be an integer or a list of integers, got {value!r}")


def peft_config_dict(
    rank: int,
    alpha: float,
    target_modules: tuple[str, ...],
    use_rslora: bool,
    base_model_name: str,
    layers_to_transform: list[int] | None,
) -> dict[str, Any]:
    """adapter_config.json for a plain LoRA on a causal LM, as PEFT itself writes it."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(target_modules),
        "bias": "none",
        "use_rslora": use_rslora,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": layers_to_transform,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
        "revision": None,
    }
