"""GGML's non-linear 4-bit formats IQ4_NL and IQ4_XS: each 4-bit index picks one of 16 fixed int8 levels.

Layouts (little endian, ggml-common.h): IQ4_NL = d:f16, nibbles[16] (32 values); IQ4_XS = d:f16, scales_h:u16,
scales_l:u8[4], nibbles[128] (256 values in 8 sub-blocks of 32). Value j < 16 of a 32-value (sub-)block is the
low nibble of byte j, value j >= 16 the high nibble of byte j - 16. IQ4_NL decodes d * LEVELS[q]; IQ4_XS
sub-block i decodes d * (ls_i - 32) * LEVELS[q], with the 6-bit ls_i = the low 4 bits from nibble i of scales_l
and the high 2 bits from bits 2i, 2i+1 of scales_h.

Both are a 16-entry int8 table times a per-32 scale, i.e. Q8_0 values (`as_q8_0_blocks`): exactly for IQ4_NL
(the same fp16 d); IQ4_XS's scale d * (ls - 32) is rounded once to Q8_0's fp16 (at most 2^-11 of it)."""

from __future__ import annotations

import torch

from ember.models.quant.block_format import BlockFormat, low_high_nibbles, read_f16

QK = 32  # values per IQ4_NL block and per IQ4_XS sub-block
QK_K = 256  # values per IQ4_XS super-block
SUB_BLOCKS = QK_K // QK
# kvalues_iq4nl in ggml-common.h
LEVELS = torch.tensor(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=torch.int8
)


def _levels(nibble_bytes: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 16 * s] packed nibbles of s 32-value groups -> int8 levels [..., s, 32] in GGML's value order."""
    groups = nibble_bytes.reshape(*nibble_bytes.shape[:-1], -1, QK // 2)  # [..., s, 16]
    indices = low_high_nibbles(groups).reshape(*groups.shape[:-1], QK)  # [..., s, 32]
    return LEVELS[indices.long()]


def _xs_sub_scales(blocks: torch.Tensor) -> torch.Tensor:
    """IQ4_XS blocks [n, 136] -> the 6-bit ls - 32 of each sub-block, int32 [n, 8]."""
    scales_h = blocks[:, 2:4].to(torch.int32)
    high = scales_h[:, 0] | (scales_h[:, 1] << 8)  # [n] u16
    shifts = torch.arange(SUB_BLOCKS, dtype=torch.int32)
    high_bits = (high.unsqueeze(1) >> (2 * shifts)) & 3  # [n, 8]
    low_bytes = blocks[:, 4:8].to(torch.int32).repeat_interleave(2, dim=1)  # [n, 8]: byte i // 2
    low_bits = (low_bytes >> (4 * (shifts % 2))) & 0xF
    return (low_bits | (high_bits << 4)) - 32


def _dequantize_iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    d = read_f16(blocks, 0)  # [n, 1]
    return _levels(blocks[:, 2:]).reshape(-1, QK).float().mul_(d)  # [n, 32]


def _xs_scales(blocks: torch.Tensor) -> torch.Tensor:
    """fp32 [n, 8]: d * (ls - 32) of each sub-block, as ggml computes it (fp32 product)."""
    return read_f16(blocks, 0) * _xs_sub_scales(blocks).float()


def _dequantize_iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    levels = _levels(blocks[:, 8:]).float()  # [n, 8, 32]
    return levels.mul_(_xs_scales(blocks).unsqueeze(-1)).reshape(-1, QK_K)  # [n, 256]


def as_q8_0_blocks(blocks: torch.Tensor, qtype: str) -> torch.Tensor:
    """IQ4_NL [n, 18] or IQ4_XS [n, 136] blocks -> the Q8_0 blocks [n * values / 32, 34] of the same values
    (IQ4_XS: the scale rounded once to fp16, as the module docstring says)."""
    if qtype == "IQ4_NL":
        levels = _levels(blocks[:, 2:]).reshape(-1, QK)  # [n, 32]
        return torch.cat((blocks[:, :2], levels.view(torch.uint8)), dim=1)
    if qtype != "IQ4_XS":
        raise ValueError(f"not an IQ4 format: {qtype}")
    levels = _levels(blocks[:, 8:]).reshape(-1, QK)  # [n * 8, 32]
    scales = _xs_scales(blocks).reshape(-1, 1).to(torch.float16)  # [n * 8, 1]
    return torch.cat((scales.view(torch.uint8), levels.view(torch.uint8)), dim=1)


IQ4_NL = BlockFormat("IQ4_NL", block_size=QK, type_size=2 + QK // 2, dequantize_blocks=_dequantize_iq4_nl)
IQ4_XS = BlockFormat(
    "IQ4_XS", block_size=QK_K, type_size=2 + 2 + QK_K // 64 + QK_K // 2, dequantize_blocks=_dequantize_iq4_xs
)
