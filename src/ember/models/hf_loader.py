"""Read a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files) into a Checkpoint."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from ember.models.checkpoint import Checkpoint, GenerationDefaults
from ember.models.config import ModelConfig, RopeScaling
from ember.models.errors import ModelLoadError

if TYPE_CHECKING:
    from ember.models.load_quantization import CheckpointQuantizer
    from ember.models.quant.packed_weight import PackedWeight

# config.json "architectures" entry -> our architecture name.
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
# transformers' own defaults where config.json may omit a field.
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768, "qwen3": 32768}
_DTYPE_NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
_INDEX_FILE = "model.safetensors.index.json"


def load_hf_folder(path: str, quantization: str | None = None) -> Checkpoint:
    """Config, fp32 weights (bf16/fp16 converted), tokenizer, chat template and generation defaults.

    quantization ("q8_0", "q4_0", "q4_k") turns the linear weights into PackedWeights as each is read
    (ember.models.load_quantization decides which type each gets)."""
    if not os.path.isdir(path):
        raise ModelLoadError(path, "no such directory")
    raw_config = _read_json(path, "config.json")
    if raw_config is None:
        raise ModelLoadError(path, "no config.json; expected a Hugging Face checkpoint folder")
    config = model_config_from_hf(raw_config, os.path.join(path, "config.json"))
    weights, stored = _read_safetensors(path, config, quantization)

    from ember.models.tokenizer import Tokenizer, read_hf_chat_template

    tokenizer = Tokenizer.from_hf_folder(path)
    return Checkpoint(
        config=config,
        weights=weights,
        tokenizer=tokenizer,
        chat_template=read_hf_chat_template(path),
        source_path=path,
        source_format="safetensors",
        generation=read_generation_config(path, config.eos_token_ids),
        quantization=stored,
    )


def model_config_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    """config.json contents -> ModelConfig; ModelLoadError (naming `path`) for anything ember cannot run."""
    architecture = _architecture(raw, path)

    def required(key: str) -> Any:
        if raw.get(key) is None:
            raise ModelLoadError(path, f"config.json lacks {key!r}")
        return raw[key]

    if raw.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(path, f"hidden_act {raw['hidden_act']!r} is not supported; ember supports silu")
    if raw.get("mlp_bias"):
        raise ModelLoadError(path, "mlp_bias is not supported")
    if raw.get("use_sliding_window"):
        raise ModelLoadError(path, "sliding-window attention (use_sliding_window) is not supported")
    hidden_size = int(required("hidden_size"))
    num_heads = int(required("num_attention_heads"))
    rope_parameters = raw.get("rope_parameters") or {}
    rope_theta = raw.get("rope_theta", rope_parameters.get("rope_theta", 10000.0))
    try:
        return ModelConfig(
            architecture=architecture,
            vocab_size=int(required("vocab_size")),
            hidden_size=hidden_size,
            intermediate_size=int(required("intermediate_size")),
            num_layers=int(required("num_hidden_layers")),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
            max_position_embeddings=int(
                raw.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS[architecture]
            ),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=_rope_scaling(raw.get("rope_scaling") or rope_parameters or None, path),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=True if architecture == "qwen2" else bool(raw.get("attention_bias", False)),
            qk_norm=architecture == "qwen3",
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_token_ids(raw.get("eos_token_id")),
        )
    except (ValueError, TypeError) as e:
        raise ModelLoadError(path, f"invalid config: {e}") from e


def _architecture(raw: dict[str, Any], path: str) -> str:
    supported = ", ".join(HF_ARCHITECTURES)
    names = raw.get("architectures") or []
    for name in names:
        if name in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[name]
    if names:
        raise ModelLoadError(path, f"unsupported architecture {', '.join(names)}; ember supports {supported}")
    model_type = raw.get("model_type")
    if model_type in HF_ARCHITECTURES.values():
        return model_type
    raise ModelLoadError(path, f"unsupported model_type {model_type!r}; ember supports {supported}")


def _rope_scaling(raw: dict[str, Any] | None, path: str) -> RopeScaling | None:
    if raw is None:
        return None
    rope_type = raw.get("rope_type", raw.get("type"))
    if rope_type in (None, "default"):
        return None
    if rope_type == "linear":
        return RopeScaling(rope_type="linear", factor=float(raw["factor"]))
    if rope_type == "llama3":
        try:
            return RopeScaling(
                rope_type="llama3",
                factor=float(raw["factor"]),
                low_freq_factor=float(raw["low_freq_factor"]),
                high_freq_factor=float(raw["high_freq_factor"]),
                original_max_position_embeddings=int(raw["original_max_position_embeddings"]),
            )
        except KeyError as e:
            raise ModelLoadError(path, f"llama3 rope_scaling lacks {e.args[0]!r}") from e
    raise ModelLoadError(
        path, f"rope scaling {rope_type!r} is not supported; ember supports llama3 and linear"
    )


def _token_ids(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _read_json(folder: str, name: str) -> dict[str, Any] | None:
    """The parsed file, None when it does not exist, ModelLoadError when it is not a JSON object."""
    file = os.path.join(folder, name)
    if not os.path.exists(file):
        return None
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(file, f"cannot read JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(file, "expected a JSON object")
    return data


def _safetensors_files(path: str) -> list[str]:
    index = _read_json(path, _INDEX_FILE)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(os.path.join(path, _INDEX_FILE), "no weight_map")
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.isfile(os.path.join(path, name)):
                raise ModelLoadError(os.path.join(path, name), f"listed in {_INDEX_FILE} but missing")
        return [os.path.join(path, name) for name in files]
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ModelLoadError(path, "no *.safetensors files (PyTorch .bin checkpoints are not supported)")
    return [os.path.join(path, name) for name in files]


def _read_safetensors(
    path: str, config: ModelConfig, quantization: str | None
) -> tuple[dict[str, torch.Tensor | PackedWeight], str]:
    """All tensors, one at a time: floating ones as fp32 (or quantized), the rest as stored. Also what the files
    held: the floating dtypes ("bf16", "f16", "f32"), followed by what quantization made of them."""
    with ExitStack() as stack:
        handles = []
        for file in _safetensors_files(path):
            try:
                handles.append((file, stack.enter_context(safe_open(file, framework="pt", device="cpu"))))
            except Exception as e:  # safetensors raises its own error type for every kind of damage
                raise ModelLoadError(file, f"cannot read safetensors: {e}") from e
        names: set[str] = set()
        for file, handle in handles:
            for name in handle.keys():
                if name in names:
                    raise ModelLoadError(file, f"tensor {name} appears in more than one file")
                names.add(name)
        # Every name is known before any tensor is read: the quantizer's choices depend on which exist.
        quantizer = _quantizer(quantization, config, names)

        weights: dict[str, torch.Tensor | PackedWeight] = {}
        stored: set[str] = set()
        for file, handle in handles:
            for name in handle.keys():
                try:
                    tensor = handle.get_tensor(name)
                except Exception as e:
                    raise ModelLoadError(file, f"cannot read safetensors: {e}") from e
                if not tensor.is_floating_point():
                    weights[name] = tensor
                    continue
                stored.add(_DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)))
                tensor = tensor.float()
                weights[name] = tensor if quantizer is None else quantizer.convert(name, tensor)
    held = "/".join(sorted(stored)) or "f32"
    return weights, held if quantizer is None else f"{held} -> {quantizer.describe()}"


def _quantizer(quantization: str | None, config: ModelConfig, names: set[str]) -> CheckpointQuantizer | None:
    if quantization is None:
        return None
    from ember.models.load_quantization import CheckpointQuantizer

    return CheckpointQuantizer(quantization, config, names)


def read_generation_config(folder: str, eos_token_ids: tuple[int, ...] = ()) -> GenerationDefaults:
    """A folder's generation_config.json (all None when it has none), its end-of-sequence ids followed by
    `eos_token_ids`; ModelLoadError when the file is not a JSON object."""
    raw = _read_json(folder, "generation_config.json") or {}
    eos = list(_token_ids(raw.get("eos_token_id")))
    eos += [t for t in eos_token_ids if t not in eos]

    def number(key: str) -> float | None:
        value = raw.get(key)
        return None if value is None else float(value)

    top_k = raw.get("top_k")
    return GenerationDefaults(
        eos_token_ids=tuple(eos),
        temperature=number("temperature"),
        top_p=number("top_p"),
        top_k=None if top_k is None else int(top_k),
        repetition_penalty=number("repetition_penalty"),
    )
