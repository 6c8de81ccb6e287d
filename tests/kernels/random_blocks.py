"""Random GGUF weights for the kernel tests: real quantization for the 32-blocks, raw bytes for the K-types."""

from __future__ import annotations

import gguf
import numpy as np
import torch
from gguf import quants

from ember.kernels.reference import BLOCK_SHAPES


def random_blocks(qtype: str, n: int, k: int, seed: int) -> torch.Tensor:
    """uint8 [n, row_bytes]. Q8_0/Q4_0/Q4_1 quantize Gaussian weights with the gguf package; Q4_K and Q6_K
    (which gguf cannot quantize) are random bytes, so every packing of quants and sub-block scales occurs,
    with the fp16 super-block scales set to finite values of a typical size."""
    rng = np.random.default_rng(seed)
    if qtype in ("Q8_0", "Q4_0", "Q4_1"):
        weights = rng.standard_normal((n, k)).astype(np.float32) * 0.05
        return torch.from_numpy(quants.quantize(weights, gguf.GGMLQuantizationType[qtype]))
    values, size = BLOCK_SHAPES[qtype]
    blocks = rng.integers(0, 256, size=(n, k // values, size), dtype=np.uint8)

    def halves() -> np.ndarray:
        scale = rng.uniform(0.2, 1.0, size=(n, k // values)) * 1e-3
        return scale.astype(np.float16).view(np.uint8).reshape(n, k // values, 2)

    if qtype == "Q4_K":
        blocks[:, :, 0:2] = halves()  # d
        blocks[:, :, 2:4] = halves()  # dmin
    else:
        blocks[:, :, 208:210] = halves()  # d
    return torch.from_numpy(blocks.reshape(n, -1))
