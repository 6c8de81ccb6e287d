"""Native CPU kernels: matmuls over GGUF blocks kept packed, with int8 activations."""

from __future__ import annotations

from ember.kernels.quant_matmul import (
    PreparedQuantWeight,
    available,
    chosen_isa,
    prepare_weight,
    quant_matmul,
    quant_matmul_prepared,
    simd_level,
    supported_isas_here,
    supports,
)

__all__ = [
    "PreparedQuantWeight",
    "available",
    "chosen_isa",
    "prepare_weight",
    "quant_matmul",
    "quant_matmul_prepared",
    "simd_level",
    "supported_isas_here",
    "supports",
]
