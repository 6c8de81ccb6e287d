"""A weight matrix kept in its GGML block format: one row of raw blocks per output feature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ember.models.quant.ggml_blocks import block_format


@dataclass(eq=False)  # tensors have no single truth value; compare dequantize() results instead
class PackedWeight:
    """`data` row r is output feature r's `in_features` values as back-to-back GGML blocks of `qtype`.

    Rows are independent, so selecting, permuting or concatenating rows works on the packed bytes."""

    qtype: str
    shape: tuple[int, int]  # (out_features, in_features)
    data: torch.Tensor  # uint8 [out, bytes_per_row]

    def __post_init__(self) -> None:
        fmt = block_format(self.qtype)
        if len(self.shape) != 2:
            raise ValueError(f"PackedWeight shape must be (out, in), got {self.shape}")
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        expected = (self.shape[0], fmt.bytes_per_row(self.shape[1]))
        if self.data.dtype != torch.uint8 or tuple(self.data.shape) != expected:
            raise ValueError(
                f"{self.qtype} weight of shape {self.shape} needs uint8 data of shape {expected}, "
                f"got {self.data.dtype} {tuple(self.data.shape)}"
            )

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in]."""
        return self._decode(self.data)

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """fp32 [len(rows), in] for the given output rows (an embedding lookup without decoding the table)."""
        return self._decode(self.data.index_select(0, rows.reshape(-1)))

    def take_rows(self, rows: torch.Tensor) -> PackedWeight:
        """A new PackedWeight made of the given rows in the given order, still packed."""
        data = self.data.index_select(0, rows.reshape(-1))  # [len(rows), bytes_per_row]
        return PackedWeight(self.qtype, (data.shape[0], self.in_features), data)

    @staticmethod
    def concat_rows(weights: Sequence[PackedWeight]) -> PackedWeight:
        """Stack weights along the output dimension (fused q|k|v or gate|up), without decoding them."""
        if not weights:
            raise ValueError("concat_rows needs at least one PackedWeight")
        first = weights[0]
        for w in weights[1:]:
            if w.qtype != first.qtype or w.in_features != first.in_features:
                raise ValueError(
                    f"concat_rows needs one qtype and in_features; got {first.qtype} {first.shape} "
                    f"and {w.qtype} {w.shape}"
                )
        data = torch.cat([w.data for w in weights], dim=0)
        return PackedWeight(first.qtype, (data.shape[0], first.in_features), data)

    def _decode(self, data: torch.Tensor) -> torch.Tensor:
        fmt = block_format(self.qtype)
        blocks = data.reshape(-1, fmt.type_size)  # [rows * blocks_per_row, type_size]
        return fmt.dequantize_blocks(blocks).reshape(data.shape[0], self.in_features)
