"""Unquantized GGML types (F32, F16, BF16) as one-value blocks, so every tensor type decodes the same way."""

from __future__ import annotations

import torch

from ember.models.quant.block_format import BlockFormat


def _dequantize_f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)  # [n, 4] -> [n, 1]


def _dequantize_f16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).float()  # [n, 2] -> [n, 1]


def _dequantize_bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.bfloat16).float()  # [n, 2] -> [n, 1]


F32 = BlockFormat("F32", block_size=1, type_size=4, dequantize_blocks=_dequantize_f32)
F16 = BlockFormat("F16", block_size=1, type_size=2, dequantize_blocks=_dequantize_f16)
BF16 = BlockFormat("BF16", block_size=1, type_size=2, dequantize_blocks=_dequantize_bf16)
