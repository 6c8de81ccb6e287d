"""A linear layer whose weight stays in GGML block format; the matmul is chosen once, at construction."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ember.kernels.tile_blocks import INVERTIBLE_QTYPES, raw_blocks_from_tiles
from ember.models.quant.kernel_stand_ins import StandIn, has_stand_in, kernel_stand_in
from ember.models.quant.packed_weight import PackedWeight

if TYPE_CHECKING:
    from ember.kernels.quant_matmul import PreparedQuantWeight

# x [..., in] and a packed weight (out, in) -> [..., out], without the bias. This is the single dispatch point
# where a faster kernel (integer dot products over the blocks) replaces the reference.
PackedMatmul = Callable[[torch.Tensor, PackedWeight], torch.Tensor]


def dequantize_matmul(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """The exact reference: decode the whole weight to fp32, then one fp32 matmul. Nothing is cached."""
    return torch.matmul(x, weight.dequantize().t())  # [..., in] @ [in, out] -> [..., out]


class PackedLinear(nn.Module):
    """y = x @ W.T + b with W kept packed. The raw blocks are a buffer (`weight_data`), so `.to()` and
    `state_dict()` see them; `weight` rebuilds the PackedWeight view over that buffer."""

    def __init__(
        self, weight: PackedWeight, bias: torch.Tensor | None = None, matmul_fn: PackedMatmul | None = None
    ) -> None:
        super().__init__()
        if bias is not None and tuple(bias.shape) != (weight.out_features,):
            raise ValueError(
                f"bias shape {tuple(bias.shape)} does not match out_features {weight.out_features}"
            )
        self.qtype = weight.qtype
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.register_buffer("weight_data", weight.data)
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)
        self.matmul_fn: PackedMatmul = matmul_fn if matmul_fn is not None else dequantize_matmul
        self._weight_view: PackedWeight | None = None
        self.prepared: PreparedQuantWeight | None = None  # the kernel's tiles, once use_fast_kernel succeeded
        self.converted_from: str | None = None  # the file's block format, when the kernels run a stand-in
        self._kernel_matmul: Callable[[torch.Tensor], torch.Tensor] | None = None  # x -> x @ W^T on the tiles

    def use_fast_kernel(self) -> bool:
        """Switches to the int8 block kernel (ember.kernels) when it is built and knows this qtype.

        The weight is rearranged for the kernel once, here. The raw blocks are then let go of where the tiles keep
        every byte of them (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: `weight` rebuilds them on demand), and kept for Q4_K and
        Q6_K."""
        from ember import kernels

        if not kernels.available():
            return False
        if not kernels.supports(self.qtype) and has_stand_in(self.qtype):
            self._take_stand_in(kernel_stand_in(self.weight))
        if not kernels.supports(self.qtype):
            return False
        prepared = kernels.prepare_weight(self.weight.data, self.qtype, self.out_features, self.in_features)
        self.prepared = prepared
        if prepared.interleaved and self.qtype in INVERTIBLE_QTYPES:
            # The tiles keep every raw byte: holding the raw blocks too doubled the weights' RSS (docs/decisions.md,
            # server RSS). A tied lm_head's blocks stay alive in the embedding, which reads them every step.
            self.weight_data = None
            self._weight_view = None

        def prepared_matmul(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, self.in_features).float().contiguous()  # [M, in]
            y = kernels.quant_matmul_prepared(flat, prepared)  # [M, out]
            return y.reshape(*x.shape[:-1], self.out_features)

        self._kernel_matmul = prepared_matmul
        return True

    def _take_stand_in(self, stand_in: StandIn) -> None:
        """From now on this layer is its stand-in, on every path (the module path decodes the same blocks)."""
        self.weight_data = stand_in.weight.data
        self.qtype = stand_in.weight.qtype
        self.converted_from = stand_in.original_qtype

    @property
    def weight(self) -> PackedWeight:
        if self.weight_data is None:  # held as tiles only: rebuilt byte for byte, not kept (rarely asked for)
            assert self.prepared is not None
            raw = raw_blocks_from_tiles(self.prepared.data, self.qtype, self.out_features, self.in_features)
            return PackedWeight(self.qtype, (self.out_features, self.in_features), raw)
        # Kept between calls (building one validates its shape, ~10 us a step); rebuilt when .to() swapped the buffer.
        view = self._weight_view
        if view is None or view.data is not self.weight_data:
            view = PackedWeight(self.qtype, (self.out_features, self.in_features), self.weight_data)
            self._weight_view = view
        return view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"PackedLinear expects last dim {self.in_features}, got {tuple(x.shape)}")
        # The kernel reads the tiles alone; only the reference path needs the raw blocks as a PackedWeight.
        y = self._kernel_matmul(x) if self._kernel_matmul is not None else self.matmul_fn(x, self.weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}"
