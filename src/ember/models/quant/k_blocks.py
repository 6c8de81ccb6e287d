"""GGML's 256-value "K" super-block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

A super-block holds 8 sub-blocks of 32 values (Q4_K, Q5_K) or 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K), each with
its own small integer scale (and min) multiplied by the super-block's fp16 d (and dmin). Byte layouts follow
ggml-common.h; the comments at each function give the offsets.
"""

from __future__ import annotations

import torch

from ember.models.quant.block_format import BlockFormat, low_high_nibbles, read_f16, unpack_bits

QK_K = 256  # values per super-block


def _scales_and_mins_6bit(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> eight 6-bit scales and eight 6-bit mins, each fp32 [n, 8].

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales/mins 4-7 take their low 4 bits
    from the nibbles of bytes 8-11 and their top 2 bits from the top of bytes 0-3 / 4-7."""
    low_scale, low_min, mixed = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]  # [n, 4] each
    scales = torch.cat((low_scale & 0x3F, (mixed & 0x0F) | ((low_scale >> 2) & 0x30)), dim=-1)  # [n, 8]
    mins = torch.cat((low_min & 0x3F, (mixed >> 4) | ((low_min >> 2) & 0x30)), dim=-1)  # [n, 8]
    return scales.float(), mins.float()


def _nibbles_by_32(qs: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 128] -> uint8 [n, 8, 32]: each 32 bytes give 32 low nibbles, then 32 high nibbles."""
    return low_high_nibbles(qs.reshape(-1, 4, 32)).reshape(-1, 8, 32)


def _dequantize_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    # scales:u8[16] (low nibble scale, high nibble min) | qs:u8[64] (2-bit) | d:f16 @80 | dmin:f16 @82
    n = blocks.shape[0]
    scales = blocks[:, 0:16]
    d, dmin = read_f16(blocks, 80), read_f16(blocks, 82)  # [n, 1]
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = unpack_bits(blocks[:, 16:80].reshape(n, 2, 32), 2).reshape(n, 16, 16).float()  # [n, 16, 16]
    return (dl * q - ml).reshape(n, QK_K)


def _dequantize_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    # hmask:u8[32] | qs:u8[64] (low 2 bits) | scales:u8[12] (16 packed 6-bit) @96 | d:f16 @108
    n = blocks.shape[0]
    packed_scales = blocks[:, 96:108]
    low = low_high_nibbles(packed_scales[:, 0:8]).reshape(n, 16)
    high = unpack_bits(packed_scales[:, 8:12], 2).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()  # [n, 16]
    dl = (read_f16(blocks, 108) * scales).reshape(n, 16, 1)
    low_bits = unpack_bits(blocks[:, 32:96].reshape(n, 2, 32), 2).reshape(n, 16, 16)
    high_bit = unpack_bits(blocks[:, 0:32], 1).reshape(n, 16, 16)
    # A set hmask bit means "no offset"; a clear one subtracts 4.
    q = (low_bits.to(torch.int8) - ((high_bit ^ 1) << 2).to(torch.int8)).float()  # [n, 16, 16]
    return (dl * q).reshape(n, QK_K)


def _dequantize_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    # d:f16 | dmin:f16 | scales:u8[12] | qs:u8[128] @16
    n = blocks.shape[0]
    scales, mins = _scales_and_mins_6bit(blocks[:, 4:16])
    d = (read_f16(blocks, 0) * scales).reshape(n, 8, 1)
    dm = (read_f16(blocks, 2) * mins).reshape(n, 8, 1)
    q = _nibbles_by_32(blocks[:, 16:144]).float()  # [n, 8, 32]
    return (d * q - dm).reshape(n, QK_K)


def _dequantize_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    # d:f16 | dmin:f16 | scales:u8[12] | qh:u8[32] @16 (bit j = fifth bit of sub-block j) | qs:u8[128] @48
    n = blocks.shape[0]
    scales, mins = _scales_and_mins_6bit(blocks[:, 4:16])
    d = (read_f16(blocks, 0) * scales).reshape(n, 8, 1)
    dm = (read_f16(blocks, 2) * mins).reshape(n, 8, 1)
    high = unpack_bits(blocks[:, 16:48], 1)  # [n, 8, 32]
    q = (_nibbles_by_32(blocks[:, 48:176]) | (high << 4)).float()
    return (d * q - dm).reshape(n, QK_K)


def _dequantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    # ql:u8[128] (low 4 bits) | qh:u8[64] @128 (high 2 bits) | scales:i8[16] @192 | d:f16 @208
    n = blocks.shape[0]
    low = low_high_nibbles(blocks[:, 0:128].reshape(n, 2, 64)).reshape(n, 8, 32)
    high = unpack_bits(blocks[:, 128:192].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    scales = blocks[:, 192:208].view(torch.int8).float()  # [n, 16]
    d = (read_f16(blocks, 208) * scales).reshape(n, 16, 1)
    return (d * q).reshape(n, QK_K)


Q2_K = BlockFormat("Q2_K", block_size=QK_K, type_size=84, dequantize_blocks=_dequantize_q2_k)
Q3_K = BlockFormat("Q3_K", block_size=QK_K, type_size=110, dequantize_blocks=_dequantize_q3_k)
Q4_K = BlockFormat("Q4_K", block_size=QK_K, type_size=144, dequantize_blocks=_dequantize_q4_k)
Q5_K = BlockFormat("Q5_K", block_size=QK_K, type_size=176, dequantize_blocks=_dequantize_q5_k)
Q6_K = BlockFormat("Q6_K", block_size=QK_K, type_size=210, dequantize_blocks=_dequantize_q6_k)
