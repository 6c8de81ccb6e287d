"""GGML's 32-value block formats: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Layouts (little endian): Q8_0 = d:f16, q:int8[32]; Q4_0 = d:f16, nibbles[16]; Q4_1 = d:f16, m:f16, nibbles[16];
Q5_0 = d:f16, qh:u32, nibbles[16]; Q5_1 = d:f16, m:f16, qh:u32, nibbles[16]. Value j < 16 is the low nibble of
byte j, value j >= 16 the high nibble of byte j - 16; bit j of qh is the fifth bit of value j.
Symmetric types decode d * (q - offset), the `_1` types d * q + m.
"""

from __future__ import annotations

import torch

from ember.models.quant.block_format import BlockFormat, low_high_nibbles, read_f16, unpack_bits

QK = 32  # values per block


def _nibbles(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The 32 four-bit values starting at byte `offset`, uint8 [n, 32]."""
    return low_high_nibbles(blocks[:, offset : offset + QK // 2]).reshape(-1, QK)


def _fifth_bits(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """Bit j of the little-endian u32 at `offset`, shifted to bit 4, uint8 [n, 32]."""
    qh = blocks[:, offset : offset + 4]  # [n, 4]; bit j lives in byte j // 8 at position j % 8
    # A 256-entry table (byte -> its 8 bits, already shifted to bit 4) beats eight shift-and-mask passes.
    table = (unpack_bits(torch.arange(256, dtype=torch.uint8), 1) << 4).t().contiguous()  # [256, 8]
    return table[qh.long()].reshape(-1, QK)  # [n, 4, 8] -> [n, 32]


def _dequantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = read_f16(blocks, 0)  # [n, 1]
    return blocks[:, 2:].view(torch.int8).float().mul_(d)  # [n, 32]


def _dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = read_f16(blocks, 0)
    q = _nibbles(blocks, 2).to(torch.int8) - 8  # [n, 32]
    return q.float().mul_(d)


def _dequantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = read_f16(blocks, 0), read_f16(blocks, 2)
    return _nibbles(blocks, 4).float().mul_(d).add_(m)  # [n, 32]


def _dequantize_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = read_f16(blocks, 0)
    q = (_nibbles(blocks, 6) | _fifth_bits(blocks, 2)).to(torch.int8) - 16  # [n, 32]
    return q.float().mul_(d)


def _dequantize_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = read_f16(blocks, 0), read_f16(blocks, 2)
    q = _nibbles(blocks, 8) | _fifth_bits(blocks, 4)  # [n, 32]
    return q.float().mul_(d).add_(m)


Q8_0 = BlockFormat("Q8_0", block_size=QK, type_size=2 + QK, dequantize_blocks=_dequantize_q8_0)
Q4_0 = BlockFormat("Q4_0", block_size=QK, type_size=2 + QK // 2, dequantize_blocks=_dequantize_q4_0)
Q4_1 = BlockFormat("Q4_1", block_size=QK, type_size=4 + QK // 2, dequantize_blocks=_dequantize_q4_1)
Q5_0 = BlockFormat("Q5_0", block_size=QK, type_size=6 + QK // 2, dequantize_blocks=_dequantize_q5_0)
Q5_1 = BlockFormat("Q5_1", block_size=QK, type_size=8 + QK // 2, dequantize_blocks=_dequantize_q5_1)
