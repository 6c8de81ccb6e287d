"""From a model path (or nothing: the embedded default) to a ready network on the chosen device."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass

import torch

from ember.models.checkpoint import Checkpoint, GenerationDefaults
from ember.models.config import ModelConfig
from ember.models.errors import ModelLoadError
from ember.models.generation_choice import GenerationChoice, resolve_generation
from ember.models.heap_trim import release_free_heap
from ember.models.load_quantization import parse_quantization

logger = logging.getLogger(__name__)

WEIGHT_FORMATS = ("auto", "fp32", "bf16", "packed")
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class LoadConfig:
    """Which model to load and how to hold its weights."""

    model: str | None = None
    """A GGUF file or a Hugging Face checkpoint folder; None serves the embedded SmolLM2-135M-Instruct."""
    weight_format: str = "auto"
    """fp32 (reference), bf16 (GPUs / CPUs with native bf16), packed (GGUF blocks as loaded), auto: per device."""
    device: str = "cpu"
    quant_kernels: bool = True
    """Run packed weights on the int8 block kernel when it is built; False keeps the exact fp32 reference path."""
    quantization: str | None = None
    """q8_0, q4_0 or q4_k (any case): quantize a safetensors checkpoint's linear weights to that GGML block
    format while loading, then serve them packed like a GGUF's. None loads the weights as they are."""
    generation: GenerationChoice = GenerationChoice()
    """Where the sampling defaults of requests come from (models/generation_choice.py)."""

    def __post_init__(self) -> None:
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(
                f"weight_format must be one of {', '.join(WEIGHT_FORMATS)}, got {self.weight_format!r}"
            )
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.quantization is None:
            return
        parse_quantization(self.quantization)  # ValueError naming the accepted values
        object.__setattr__(self, "quantization", self.quantization.lower())
        if self.weight_format not in ("auto", "packed"):
            raise ValueError(
                f"quantization {self.quantization} stores packed blocks; it cannot be combined with "
                f"weight_format {self.weight_format!r} (use auto or packed)"
            )


@dataclass
class LoadedModel:
    """The network plus everything the engine and the API need to know about it."""

    network: torch.nn.Module
    config: ModelConfig
    tokenizer: object  # ember.models.tokenizer.Tokenizer
    chat_template: str | None
    generation: GenerationDefaults
    name: str
    source_path: str
    source_format: str
    file_quantization: str  # what the file holds ("Q4_1", "bf16"), and what load-time quantization made of it
    weight_format: str
    device: torch.device
    load_seconds: float
    kernel_linears: int = 0  # packed linears running on the int8 block kernel (the rest use the reference)


def resolve_weight_format(requested: str, device: torch.device, is_gguf: bool) -> str:
    """auto: bf16 on GPUs; on CPUs a GGUF stays in its packed blocks when the int8 block kernel is built (as
    accurate as llama.cpp and 4-10x faster than fp32 here), else fp32. Never bf16 on CPUs without native bf16,
    where its matmul is 10-100x slower than fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16"
    from ember import kernels

    return "packed" if is_gguf and kernels.available() else "fp32"


def gguf_file_of(path: str) -> str | None:
    """The GGUF file a model path means: the path itself, or the single .gguf of a folder without config.json."""
    if os.path.isfile(path):
        return path  # a file is read as GGUF; anything else is refused there with a clear error
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if len(ggufs) == 1:
            return os.path.join(path, ggufs[0])
    return None


def enable_quant_kernels(network: torch.nn.Module) -> int:
    """Moves every packed linear onto the int8 kernel, through a Q8_0 stand-in for the block formats it lacks;
    returns how many made it, and logs the kernel family, which formats were converted and which linears stayed
    on a slow path."""
    from ember import kernels
    from ember.models.quant.packed_linear import PackedLinear

    if kernels.available():
        _dense_linears_to_stand_ins(network)  # logged below with the other stand-ins, as "fp32 as Q8_0"
    linears = [m for m in network.modules() if isinstance(m, PackedLinear)]
    on_kernel = [m.use_fast_kernel() for m in linears]
    if any(on_kernel):
        logger.info(
            "int8 kernels: %d linears on %s (this CPU runs %s; EMBER_KERNEL_ISA caps it)",
            sum(on_kernel),
            kernels.chosen_isa(),
            ", ".join(kernels.supported_isas_here()),
        )
    # What no stand-in fits (rows not a multiple of 32 values, or no kernels built) stays fp32: exact, but torch
    # matmuls at 4 bytes a weight, and the model then stays off the fused decode step.
    dense = [m for m in network.modules() if type(m) is torch.nn.Linear]
    if dense:
        logger.warning(
            "%d linears held as fp32 (unquantized tensors in the file): torch matmuls, no fused decode step",
            len(dense),
        )
    stand_ins = Counter(f"{m.converted_from} as {m.qtype}" for m in linears if m.converted_from is not None)
    slow = Counter(m.qtype for m, fast in zip(linears, on_kernel, strict=True) if not fast)
    if stand_ins:
        listed = ", ".join(f"{count} {kind}" for kind, count in sorted(stand_ins.items()))
        logger.info("int8 kernels: linears converted at load (no kernel of their own): %s", listed)
    if slow:
        listed = ", ".join(f"{count} {qtype}" for qtype, count in sorted(slow.items()))
        logger.warning(
            "linears left on the slow reference path (no int8 kernel for their format): %s", listed
        )
    return sum(on_kernel)


def _dense_linears_to_stand_ins(network: torch.nn.Module) -> int:
    """Every unquantized nn.Linear of a packed model that Q8_0 fits becomes a PackedLinear over its Q8_0 stand-in
    (a tied lm_head too: the embedding keeps its own fp32 table). Returns how many were replaced."""
    from ember.models.quant.kernel_stand_ins import dense_stand_in
    from ember.models.quant.packed_linear import PackedLinear

    replaced = 0
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            stand_in = dense_stand_in(child)
            if stand_in is None:
                continue
            bias = None if child.bias is None else child.bias.detach()
            packed = PackedLinear(stand_in.weight, bias)
            packed.converted_from = stand_in.original_qtype
            setattr(parent, name, packed)
            replaced += 1
    return replaced


def read_checkpoint(path: str, keep_packed: bool, quantization: str | None = None) -> Checkpoint:
    """A GGUF (blocks kept packed or decoded) or a Hugging Face folder (optionally quantized while read)."""
    from ember.models.gguf_loader import load_gguf
    from ember.models.hf_loader import load_hf_folder

    if not os.path.exists(path):
        raise ModelLoadError(path, "no such file or directory")
    gguf = gguf_file_of(path)
    if gguf is not None and quantization is not None:
        raise ModelLoadError(
            path,
            f"quantization {quantization} applies to safetensors checkpoints; a GGUF file is already "
            "quantized (its blocks are served as stored)",
        )
    if gguf is not None:
        return load_gguf(gguf, keep_packed=keep_packed)
    if os.path.isdir(path):
        return load_hf_folder(path, quantization)
    return load_gguf(path, keep_packed=keep_packed)


def model_name_for(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for suffix in (".gguf",):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def load_model(cfg: LoadConfig) -> LoadedModel:
    from ember.models.default_model import DEFAULT_MODEL_CARD_SAMPLING, default_gguf_path, is_default_gguf
    from ember.models.llama import DecoderModel

    started = time.perf_counter()
    path = cfg.model or default_gguf_path()
    device = torch.device(cfg.device)
    if cfg.quantization is not None:
        weight_format = "packed"
    else:
        weight_format = resolve_weight_format(cfg.weight_format, device, gguf_file_of(path) is not None)
    checkpoint = read_checkpoint(path, keep_packed=weight_format == "packed", quantization=cfg.quantization)
    if weight_format == "packed" and checkpoint.source_format != "gguf" and cfg.quantization is None:
        raise ModelLoadError(
            path,
            "weight_format 'packed' needs a GGUF file, or a quantization (q8_0, q4_0, q4_k) for a "
            "safetensors folder; use fp32 or bf16 to load it unquantized",
        )
    network = DecoderModel(checkpoint.config)
    network.load_weights(checkpoint.weights)
    checkpoint.weights.clear()  # the network owns the tensors now; drop the second reference early
    dtype = torch.bfloat16 if weight_format == "bf16" else torch.float32
    network = network.to(device=device, dtype=dtype) if weight_format != "packed" else network.to(device)
    network.eval()
    kernel_linears = 0
    if weight_format == "packed" and cfg.quant_kernels and device.type == "cpu":
        kernel_linears = enable_quant_kernels(network)
    name = DEFAULT_MODEL_NAME if cfg.model is None else model_name_for(path)
    release_free_heap()  # the load's temporaries, freed but still in the heap's RSS
    return LoadedModel(
        network=network,
        config=checkpoint.config,
        tokenizer=checkpoint.tokenizer,
        chat_template=checkpoint.chat_template,
        generation=resolve_generation(
            checkpoint.generation,
            cfg.generation,
            DEFAULT_MODEL_CARD_SAMPLING if cfg.model is None or is_default_gguf(path) else None,
        ),
        name=name,
        source_path=path,
        source_format=checkpoint.source_format,
        file_quantization=checkpoint.quantization,
        weight_format=weight_format,
        device=device,
        load_seconds=time.perf_counter() - started,
        kernel_linears=kernel_linears,
    )
