"""`--quantization`: which weights of a safetensors checkpoint become which GGML block format, as they are read.

Every linear projection (q/k/v/o, gate/up/down) takes the requested type. The output matrix (lm_head, or the
token embedding when it doubles as lm_head) is kept at Q8_0 whatever the request: llama.cpp's presets keep it
above the body's precision too (Q6_K for its 4-bit presets; ember has no Q6_K quantizer, and Q8_0 is the more
precise of the two). An untied input embedding takes the requested type, as in llama.cpp. A matrix whose
in_features is not a multiple of the type's block (256 for Q4_K) falls back to Q8_0, and to fp32 when even
32 does not divide it; llama.cpp falls back to Q5_0 there, which ember's int8 kernels run (a Q5_0 file's
weights) but ember has no quantizer for. Norms, biases and anything 1-D stay fp32.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch

from ember.models.config import ModelConfig
from ember.models.quant.ggml_blocks import block_format
from ember.models.quant.packed_weight import PackedWeight
from ember.models.quant.quantize import quantize_weight

QUANTIZATIONS = ("q8_0", "q4_0", "q4_k")  # the spellings LoadConfig and the CLI accept (any case)
OUTPUT_QTYPE = "Q8_0"
FALLBACK_QTYPE = "Q8_0"
_LINEAR_SUFFIXES = tuple(
    f"{part}.weight" for part in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
)
_EMBEDDING = "model.embed_tokens.weight"
_LM_HEAD = "lm_head.weight"


def parse_quantization(value: str) -> str:
    """The GGML type a quantization names ("q4_k" or "Q4_K" -> "Q4_K"); ValueError naming the accepted ones."""
    if value.lower() not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {value!r}")
    return value.upper()


def fitting_qtype(wanted: str, in_features: int) -> str | None:
    """`wanted` when in_features is a whole number of its blocks, else Q8_0, else None (stay fp32)."""
    for qtype in (wanted, FALLBACK_QTYPE):
        if in_features % block_format(qtype).block_size == 0:
            return qtype
    return None


class CheckpointQuantizer:
    """Decides each weight's type from its name and shape, and converts weights one at a time, so the fp32
    copy of only one matrix is alive at once."""

    def __init__(self, quantization: str, config: ModelConfig, names: Iterable[str]) -> None:
        self.requested = parse_quantization(quantization)
        names = set(names)
        # The embedding is the output matrix when tied, or when an untied checkpoint has no lm_head (the network
        # then falls back to it); a repeated lm_head of a tied model is never used, so it is left alone.
        self._embedding_is_output = config.tie_word_embeddings or _LM_HEAD not in names
        self._tied = config.tie_word_embeddings
        self.counts: Counter[str] = Counter()  # qtype (or "F32") -> matrices stored so

    def wanted_qtype(self, name: str) -> str | None:
        """The type `name` should have before the block-size check; None for weights that stay fp32."""
        if name.endswith(_LINEAR_SUFFIXES):
            return self.requested
        if name == _LM_HEAD:
            return None if self._tied else OUTPUT_QTYPE
        if name == _EMBEDDING:
            return OUTPUT_QTYPE if self._embedding_is_output else self.requested
        return None

    def convert(self, name: str, tensor: torch.Tensor) -> torch.Tensor | PackedWeight:
        """The weight as it will be held: a PackedWeight, or the fp32 tensor unchanged."""
        wanted = self.wanted_qtype(name)
        if wanted is None or tensor.dim() != 2:
            return tensor
        qtype = fitting_qtype(wanted, tensor.shape[1])
        if qtype is None:
            self.counts["F32"] += 1
            return tensor
        self.counts[qtype] += 1
        return quantize_weight(tensor, qtype)

    def describe(self) -> str:
        """What was applied, for the start-up log: "q4_k: 30 Q4_K + 181 Q8_0 matrices"."""
        parts = " + ".join(f"{count} {qtype}" for qtype, count in sorted(self.counts.items()))
        return f"{self.requested.lower()}: {parts or 'no'} matrices"
