"""What a GGML block format is: how many values one block holds, its bytes, and how to decode it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Decodes raw blocks: uint8 [n_blocks, type_size] -> fp32 [n_blocks, block_size].
BlockDequantizer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BlockFormat:
    """One GGML tensor type. A row of `in_features` values is `in_features // block_size` blocks laid out
    back to back, each `type_size` bytes."""

    name: str
    block_size: int
    type_size: int
    dequantize_blocks: BlockDequantizer

    def bytes_per_row(self, in_features: int) -> int:
        if in_features % self.block_size != 0:
            raise ValueError(
                f"{self.name}: row length {in_features} is not a multiple of the block size {self.block_size}"
            )
        return in_features // self.block_size * self.type_size


def read_f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian fp16 at byte `offset` of every block, as fp32 [n_blocks, 1]."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float()


def low_high_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., k] -> uint8 [..., 2, k]: the low nibbles, then the high nibbles (GGML's value order)."""
    out = torch.empty((*packed.shape[:-1], 2, packed.shape[-1]), dtype=torch.uint8)
    torch.bitwise_and(packed, 0x0F, out=out[..., 0, :])
    torch.bitwise_right_shift(packed, 4, out=out[..., 1, :])
    return out


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 [..., k] -> uint8 [..., 8 // bits, k]: field j holds bits [j*bits, (j+1)*bits) of each byte."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8).view(-1, 1)  # [8 // bits, 1]
    mask = (1 << bits) - 1
    return (packed.unsqueeze(-2) >> shifts) & mask
