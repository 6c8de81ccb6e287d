"""A LoRA adapter in memory, and its PEFT folder format (adapter_config.json + adapter_model.safetensors).

Base-model name check (documented choice): the shapes decide whether an adapter fits — they are always
checked and a mismatch is an error. The name in `base_model_name_or_path` is often a hub id, a local path or a
GGUF file name for the same weights, so a different name only logs a warning by default; pass
`strict_base_model=True` to make it an error.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field

import torch

from ember.lora.errors import LoraError
from ember.lora.peft_config import CONFIG_FILE, PeftLoraConfig, peft_config_dict, read_peft_config
from ember.lora.targets import TARGET_MODULES, check_target_modules, module_shapes, parent_of
from ember.models.config import ModelConfig

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")

LoraWeights = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LoraAdapter:
    """Low-rank deltas for some projections: out += (x @ A.T @ B.T) * scaling.

    `weights[(layer_idx, module)]` = (A [rank, in], B [out, rank]), with HF module names
    (q_proj ... down_proj).
    A (layer, module) pair that is absent has no delta (PEFT's layers_to_transform)."""

    name: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    weights: LoraWeights
    use_rslora: bool = False
    # (layer, modules of one fused projection) -> (A, B) for serving, built on first use; see `fused_pair`
    _fused: dict[tuple[int, tuple[str, ...]], tuple[torch.Tensor, torch.Tensor] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.name:
            raise LoraError("a LoRA adapter needs a non-empty name")
        if self.rank <= 0:
            raise LoraError(f"adapter {self.name!r}: rank must be positive, got {self.rank}")
        if self.alpha <= 0:
            raise LoraError(f"adapter {self.name!r}: alpha must be positive, got {self.alpha}")
        try:
            self.target_modules = check_target_modules(self.target_modules)
        except ValueError as exc:
            raise LoraError(f"adapter {self.name!r}: {exc}") from exc
        for (layer, module), (a, b) in self.weights.items():
            where = f"adapter {self.name!r} layer {layer} {module}"
            if module not in self.target_modules:
                raise LoraError(f"{where}: has weights but is not in target_modules {self.target_modules}")
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.rank or b.shape[1] != self.rank:
                raise LoraError(
                    f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not have rank "
                    f"{self.rank} (expected A [rank, in] and B [out, rank])"
                )

    @property
    def scaling(self) -> float:
        """alpha / rank, or alpha / sqrt(rank) for rank-stabilised LoRA (PEFT's use_rslora)."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def fused_pair(
        self, layer: int, modules: tuple[str, ...], sizes: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The deltas of `modules` (one fused base projection with output widths `sizes`) as a single pair:
        A = cat(A_i) [k*rank, in] and a block-diagonal B [sum(sizes), k*rank] with the scaling folded in, so
        x @ A.T @ B.T is every module's delta side by side in two matmuls. None if no module has weights.
        Cached: for serving, where the weights never change (training uses `weights` directly)."""
        key = (layer, modules)
        if key not in self._fused:
            # plain tensors even when first called under inference_mode, so autograd callers can use them
            with torch.inference_mode(False), torch.no_grad():
                self._fused[key] = self._fuse(layer, modules, sizes)
        return self._fused[key]

    def _fuse(
        self, layer: int, modules: tuple[str, ...], sizes: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        present = [(i, self.weights[(layer, m)]) for i, m in enumerate(modules) if (layer, m) in self.weights]
        if not present:
            return None
        a = torch.cat([pair[0] for _, pair in present])  # [k*r, in]
        b = a.new_zeros(sum(sizes), a.shape[0])  # [sum(sizes), k*r]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        for j, (i, pair) in enumerate(present):
            rows = slice(offsets[i], offsets[i] + sizes[i])
            b[rows, j * self.rank : (j + 1) * self.rank] = pair[1] * self.scaling
        return a.contiguous(), b

    def check_fits(self, config: ModelConfig) -> None:
        """LoraError naming the first layer / module whose shapes do not fit a model with this config."""
        shapes = module_shapes(config)
        for (layer, module), (a, b) in sorted(self.weights.items()):
            where = f"adapter {self.name!r} layer {layer} {module}"
            if not 0 <= layer < config.num_layers:
                raise LoraError(f"{where}: the base model has only {config.num_layers} layers")
            out_features, in_features = shapes[module]
            if a.shape[1] != in_features or b.shape[0] != out_features:
                raise LoraError(
                    f"{where}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} expect a projection "
                    f"{b.shape[0]}x{a.shape[1]} but the base model's is {out_features}x{in_features} "
                    "(an adapter trained for a different base model?)"
                )

    def to(self, device: torch.device | str, dtype: torch.dtype) -> LoraAdapter:
        """A copy whose tensors live on `device` in `dtype` (the model's), ready for the forward."""
        moved = {
            key: (
                a.to(device=device, dtype=dtype).contiguous(),
                b.to(device=device, dtype=dtype).contiguous(),
            )
            for key, (a, b) in self.weights.items()
        }
        return LoraAdapter(self.name, self.rank, self.alpha, self.target_modules, moved, self.use_rslora)


def peft_key(layer: int, module: str, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{parent_of(module)}.{module}.lora_{which}.weight"


def base_model_matches(declared: str, served: str) -> bool:
    """Whether two names plausibly denote the same model: compared by last path component, case-insensitive,
    ignoring a .gguf extension and a GGUF quantization suffix (".Q4_1", "-q8_0", "-f16")."""

    def norm(name: str) -> str:
        base = os.path.basename(os.path.normpath(name)).lower()
        base = base.removesuffix(".gguf")
        return re.sub(r"[.\-_](q\d\w*|i?q\d\w*|f16|f32|bf16)$", "", base)

    return norm(declared) == norm(served)


def inspect_peft_adapter(path: str) -> tuple[PeftLoraConfig, dict[str, tuple[int, ...]]]:
    """The config and tensor shapes of a PEFT folder, read from the file header without loading tensors."""
    from safetensors import safe_open

    if not os.path.isdir(path):
        raise LoraError(f"{path}: no such adapter folder")
    config = read_peft_config(path)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        other = (
            " (adapter_model.bin is not read: pickled weights are unsafe)"
            if os.path.isfile(os.path.join(path, "adapter_model.bin"))
            else ""
        )
        raise LoraError(f"{path}: no {WEIGHTS_FILE}{other}")
    try:
        with safe_open(weights_path, framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt header
        raise LoraError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    return config, shapes


def load_peft_adapter(
    path: str,
    model_config: ModelConfig,
    name: str,
    *,
    base_model_name: str | None = None,
    strict_base_model: bool = False,
) -> LoraAdapter:
    """Read a PEFT LoRA folder and check that it fits `model_config`; LoraError naming the problem otherwise.

    `base_model_name` is the served model's name; see the module docstring for how a mismatch is treated."""
    from safetensors.torch import load_file

    config, shapes = inspect_peft_adapter(path)
    if (
        base_model_name
        and config.base_model_name
        and not base_model_matches(config.base_model_name, base_model_name)
    ):
        message = (
            f"{path}: adapter was trained on {config.base_model_name!r} "
            f"but the served model is {base_model_name!r}"
        )
        if strict_base_model:
            raise LoraError(message)
        logger.warning("%s; loading it anyway because its shapes fit", message)
    keys = _parse_keys(path, shapes)
    modules = sorted({module for _, module, _ in keys}, key=TARGET_MODULES.index)
    if config.target_modules is not None:
        extra = [m for m in modules if m not in config.target_modules]
        if extra:
            raise LoraError(f"{path}: weights for {', '.join(extra)} which target_modules does not list")
        modules = list(config.target_modules)
    if not keys:
        raise LoraError(f"{path}: {WEIGHTS_FILE} holds no LoRA weights")
    tensors = load_file(os.path.join(path, WEIGHTS_FILE))
    weights: LoraWeights = {}
    for layer, module, _ in keys:
        if (layer, module) in weights:
            continue
        a_key, b_key = peft_key(layer, module, "A"), peft_key(layer, module, "B")
        if a_key not in tensors or b_key not in tensors:
            missing = a_key if a_key not in tensors else b_key
            raise LoraError(f"{path}: {missing} is missing (lora_A and lora_B come in pairs)")
        weights[(layer, module)] = (tensors[a_key].float(), tensors[b_key].float())
    if config.layers_to_transform is not None:
        outside = sorted({layer for layer, _ in weights} - set(config.layers_to_transform))
        if outside:
            raise LoraError(f"{path}: weights for layers {outside} outside layers_to_transform")
    adapter = LoraAdapter(name, config.rank, config.alpha, tuple(modules), weights, config.use_rslora)
    adapter.check_fits(model_config)
    return adapter


def _parse_keys(path: str, shapes: dict[str, tuple[int, ...]]) -> list[tuple[int, str, str]]:
    keys: list[tuple[int, str, str]] = []
    for key in sorted(shapes):
        match = _KEY.match(key)
        if match is None:
            raise LoraError(
                f"{path}: unexpected tensor {key!r}; ember loads only LoRA A/B weights of "
                f"{', '.join(TARGET_MODULES)} (PEFT key format "
                "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight)"
            )
        layer, parent, module, which = int(match[1]), match[2], match[3], match[4]
        if module not in TARGET_MODULES:
            raise LoraError(f"{path}: {key!r} targets {module!r}; ember supports {', '.join(TARGET_MODULES)}")
        if parent != parent_of(module):
            raise LoraError(f"{path}: {key!r} puts {module} under {parent}, expected {parent_of(module)}")
        keys.append((layer, module, which))
    return keys


def save_peft_adapter(adapter: LoraAdapter, path: str, base_model_name: str) -> None:
    """Write `adapter` as a PEFT folder that `peft.PeftModel.from_pretrained(model, path)` loads."""
    import json

    from safetensors.torch import save_file

    if not adapter.weights:
        raise LoraError(f"adapter {adapter.name!r} has no weights to save")
    os.makedirs(path, exist_ok=True)
    layers = sorted({layer for layer, _ in adapter.weights})
    covered = {module for _, module in adapter.weights}
    for layer in layers:
        missing = [m for m in covered if (layer, m) not in adapter.weights]
        if missing:
            raise LoraError(
                f"adapter {adapter.name!r}: layer {layer} lacks {', '.join(missing)}; PEFT needs the same "
                "modules in every adapted layer"
            )
    tensors: dict[str, torch.Tensor] = {}
    for (layer, module), (a, b) in adapter.weights.items():
        tensors[peft_key(layer, module, "A")] = a.detach().float().cpu().contiguous()
        tensors[peft_key(layer, module, "B")] = b.detach().float().cpu().contiguous()
    # All layers from 0 up is PEFT's default; anything else must be spelled out or PEFT adds zero deltas
    # to the layers in between (harmless) and warns about their missing keys.
    layers_to_transform = None if layers == list(range(len(layers))) else layers
    modules = tuple(m for m in adapter.target_modules if m in covered)
    config = peft_config_dict(
        adapter.rank, adapter.alpha, modules, adapter.use_rslora, base_model_name, layers_to_transform
    )
    save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
