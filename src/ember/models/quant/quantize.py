"""fp32 weight rows -> GGML blocks (Q8_0, Q4_0, Q4_K) in the layouts the dequantizers and kernels read.

Q8_0 and Q4_0 follow ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref (one fp16 scale per 32 values,
the same float32 operations in the same order), so their bytes equal llama.cpp's and gguf-py's. Q4_K's
scale/min search lives in k_quantize.py. Work is split into chunks of blocks so the temporaries of a large
matrix stay a few MiB.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ember.models.quant.ggml_blocks import block_format
from ember.models.quant.k_quantize import quantize_q4_k_blocks
from ember.models.quant.packed_weight import PackedWeight

QK = 32  # values per Q8_0 / Q4_0 block
_CHUNK_VALUES = 1 << 18  # values quantized per pass
_JUST_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0.0)))

# fp32 [n_blocks, block_size] -> uint8 [n_blocks, type_size]
BlockQuantizer = Callable[[torch.Tensor], torch.Tensor]


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf (ties away from zero) for float32 |x| < 2**22, exactly. Adding 0.5 before truncating would
    round 0.49999997 up to 1; adding the float just below 0.5 rounds exact halves away and nothing else."""
    return torch.trunc(x + torch.copysign(torch.tensor(_JUST_BELOW_HALF), x))


def f16_bytes(values: torch.Tensor) -> torch.Tensor:
    """fp32 [n, 1] -> the little-endian fp16 bytes, uint8 [n, 2] (round to nearest even, as GGML converts)."""
    return values.to(torch.float16).view(torch.uint8)


def _reciprocal_or_zero(d: torch.Tensor) -> torch.Tensor:
    """1/d, and 0 where d is 0: an all-zero block quantizes to zeros instead of NaNs."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def quantize_q8_0_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """fp32 [n, 32] -> uint8 [n, 34]: d = max|x| / 127, q = round(x / d) as int8."""
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127  # [n, 1]
    q = round_half_away(blocks * _reciprocal_or_zero(d)).to(torch.int8)  # [n, 32]
    return torch.cat((f16_bytes(d), q.view(torch.uint8)), dim=-1)


def quantize_q4_0_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """fp32 [n, 32] -> uint8 [n, 18]: d = -(the value of largest magnitude) / 8, so that value maps to -8
    exactly and the rest to q = trunc(x / d + 8.5) clamped to [0, 15]."""
    largest = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))  # [n, 1], sign kept
    d = largest / -8
    q = torch.trunc(blocks * _reciprocal_or_zero(d) + 8.5).clamp_(0, 15).to(torch.uint8)  # [n, 32]
    nibbles = q[:, : QK // 2] | (q[:, QK // 2 :] << 4)  # value j low nibble, value j + 16 high: [n, 16]
    return torch.cat((f16_bytes(d), nibbles), dim=-1)


_BLOCK_QUANTIZERS: dict[str, BlockQuantizer] = {
    "Q8_0": quantize_q8_0_blocks,
    "Q4_0": quantize_q4_0_blocks,
    "Q4_K": quantize_q4_k_blocks,
}
QUANTIZE_QTYPES: tuple[str, ...] = tuple(_BLOCK_QUANTIZERS)


def quantize_rows(weight: torch.Tensor, qtype: str) -> torch.Tensor:
    """fp32 [n, k] -> uint8 [n, bytes_per_row]: each row as back-to-back `qtype` blocks.

    ValueError for a qtype ember cannot quantize to, or a k that is not a multiple of its block size."""
    if qtype not in _BLOCK_QUANTIZERS:
        raise ValueError(f"cannot quantize to {qtype!r}; supported: {', '.join(QUANTIZE_QTYPES)}")
    if weight.dim() != 2:
        raise ValueError(f"quantize_rows expects a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    fmt = block_format(qtype)
    n, k = weight.shape
    row_bytes = fmt.bytes_per_row(k)  # raises for a k that is not a multiple of the block size
    blocks = weight.detach().to(device="cpu", dtype=torch.float32).reshape(-1, fmt.block_size)  # [n*k/bs, bs]
    out = torch.empty(blocks.shape[0], fmt.type_size, dtype=torch.uint8)
    step = max(1, _CHUNK_VALUES // fmt.block_size)
    quantizer = _BLOCK_QUANTIZERS[qtype]
    for start in range(0, blocks.shape[0], step):
        out[start : start + step] = quantizer(blocks[start : start + step])
    return out.reshape(n, row_bytes)


def quantize_weight(weight: torch.Tensor, qtype: str) -> PackedWeight:
    """A dense [out, in] weight as a PackedWeight of `qtype`."""
    return PackedWeight(qtype, (weight.shape[0], weight.shape[1]), quantize_rows(weight, qtype))
