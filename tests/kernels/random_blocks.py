"""Random GGUF weights for the kernel tests: real quantization for the 32-blocks, raw bytes for the K-types."""

from __future__ import annotations

import gguf
import numpy as np
import torch
from gguf import quants

from ember.models.quant.ggml_blocks import BLOCK_FORMATS

# Byte offsets of the fp16 super-block scales (d, then dmin where the type has one) of the 256-value K-types.
SCALE_OFFSETS = {
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
}


def random_blocks(qtype: str, n: int, k: int, seed: int) -> torch.Tensor:
    """uint8 [n, row_bytes]. The 32-value types quantize Gaussian weights with the gguf package; the K- and IQ4
    types (which gguf cannot quantize) are random bytes, so every packing of quants and sub-block scales occurs,
    with the fp16 super-block scales set to finite values of a typical size."""
    rng = np.random.default_rng(seed)
    if qtype in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        weights = rng.standard_normal((n, k)).astype(np.float32) * 0.05
        return torch.from_numpy(quants.quantize(weights, gguf.GGMLQuantizationType[qtype]))
    values, size = BLOCK_FORMATS[qtype].block_size, BLOCK_FORMATS[qtype].type_size
    blocks = rng.integers(0, 256, size=(n, k // values, size), dtype=np.uint8)

    def halves() -> np.ndarray:
        scale = rng.uniform(0.2, 1.0, size=(n, k // values)) * 1e-3
        return scale.astype(np.float16).view(np.uint8).reshape(n, k // values, 2)

    for offset in SCALE_OFFSETS[qtype]:  # the fp16 d (and dmin) of each super-block
        blocks[:, :, offset : offset + 2] = halves()
    return torch.from_numpy(blocks.reshape(n, -1))
