"""What the quantized kernels compute, in plain torch: the fallback without a compiler, and the test oracle."""

from __future__ import annotations

import gguf
import numpy as np
import torch
from gguf import quants

ACTIVATION_BLOCK = 32

# Values per block and bytes per block of every GGUF format the kernels accept.
BLOCK_SHAPES: dict[str, tuple[int, int]] = {
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q4_K": (256, 144),
    "Q6_K": (256, 210),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
}


def check_weight_blocks(w_data: torch.Tensor, qtype: str, n: int, k: int) -> None:
    """ValueError unless `w_data` holds n rows of k values as raw `qtype` blocks."""
    if qtype not in BLOCK_SHAPES:
        raise ValueError(f"quantized matmul supports {sorted(BLOCK_SHAPES)}, not {qtype!r}")
    values_per_block, bytes_per_block = BLOCK_SHAPES[qtype]
    if n <= 0 or k <= 0 or k % values_per_block != 0:
        raise ValueError(
            f"{qtype} weight shape ({n}, {k}): in_features must be a positive multiple of {values_per_block}"
        )
    expected = (n, k // values_per_block * bytes_per_block)
    if w_data.dtype != torch.uint8 or tuple(w_data.shape) != expected:
        raise ValueError(
            f"{qtype} weight ({n}, {k}) needs uint8 blocks of shape {expected}, got {w_data.dtype} {tuple(w_data.shape)}"
        )


def dequantize_blocks(w_data: torch.Tensor, qtype: str, n: int, k: int) -> torch.Tensor:
    """fp32 [n, k] decoded by the gguf package (an implementation independent of ours)."""
    check_weight_blocks(w_data, qtype, n, k)
    values = quants.dequantize(w_data.cpu().numpy(), gguf.GGMLQuantizationType[qtype])
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(n, k)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per 32-value block: q = round-half-even(x * 127 / amax) in [-127, 127], d = amax / 127.
    Returns q as fp32 [M, K] and d [M, K / 32]; x ~= q * d blockwise."""
    m, k = x.shape
    if k % ACTIVATION_BLOCK != 0:
        raise ValueError(f"activation width {k} is not a multiple of {ACTIVATION_BLOCK}")
    blocks = x.float().reshape(m, k // ACTIVATION_BLOCK, ACTIVATION_BLOCK)  # [M, B, 32]
    amax = blocks.abs().amax(dim=-1)  # [M, B]
    # Tensor / tensor on purpose: a Python scalar over a tensor is computed as a reciprocal times 127,
    # one ulp away from the kernels' 127.0f / amax, which flips the rounding of exact ties.
    full_scale = torch.full_like(amax, 127.0)
    scale_inv = torch.where(amax != 0, full_scale / amax, torch.zeros_like(amax))
    q = torch.round(blocks * scale_inv.unsqueeze(-1))  # [M, B, 32], half to even like the kernels
    return q.reshape(m, k), amax / full_scale


def reference_quant_matmul(
    x: torch.Tensor, w_data: torch.Tensor, qtype: str, n: int, k: int, quantize_inputs: bool = True
) -> torch.Tensor:
    """y [M, n] = x [M, k] @ W^T with W decoded from its blocks, summed in fp64.

    quantize_inputs=True first rounds x per block to int8 as the kernels do, so the two agree to float
    rounding; False is the pure fp32-weights reference (it differs by the activation quantization error)."""
    weight = dequantize_blocks(w_data, qtype, n, k).double()  # [n, k]
    if quantize_inputs:
        q, d = quantize_activations(x)
        inputs = q.double().reshape(x.shape[0], -1, ACTIVATION_BLOCK) * d.double().unsqueeze(-1)
        inputs = inputs.reshape(x.shape[0], k)  # [M, k]
    else:
        inputs = x.double()
    return (inputs @ weight.t()).float()
