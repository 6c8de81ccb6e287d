"""Which instruction set the native kernels run on: the families this build and CPU support, and the one chosen.

Every family reads the same repacked tiles, so the choice is made when a weight is prepared (at model load) and
travels with it. `auto` takes the fastest family the CPU has (AUTO_ORDER); EMBER_KERNEL_ISA names a family, so
the AVX2 kernels can still be run and measured on an AVX-512 machine. Every family's matmuls return the same bits,
so between avx2 and avx512_vnni the choice changes speed, never an answer. The ids come from the extension
(csrc/quant_kernels/kernel_isa.h), never from a copy here."""

from __future__ import annotations

import os
from types import ModuleType

ISA_ENV = "EMBER_KERNEL_ISA"
ISA_ORDER = ("scalar", "avx2", "avx512_vnni")  # portable first
# `auto` takes the last of these the CPU has. AVX-512 VNNI is 1.5x faster batched than AVX2 and returns its bits
# (once it did not, and flipped the default model's near-tie answers: docs/decisions.md).
AUTO_ORDER = ("scalar", "avx2", "avx512_vnni")
ISA_CHOICES = ("auto", *ISA_ORDER)


class KernelIsaError(ValueError):
    """An instruction set that does not exist, or that this CPU or build cannot run."""


def supported_isas(native: ModuleType | None) -> dict[str, int]:
    """{name: id} of the families the built extension runs on this CPU, portable first; {} without one."""
    if native is None:
        return {}
    return {str(name): int(isa_id) for name, isa_id in native.isas().items()}


def resolve_isa(requested: str, supported: dict[str, int]) -> str:
    """`requested` ("auto" or a family name) -> the family to run; KernelIsaError names what is possible."""
    if requested not in ISA_CHOICES:
        raise KernelIsaError(f"{ISA_ENV}={requested!r} is not one of {', '.join(ISA_CHOICES)}")
    if requested == "auto":
        return max((isa for isa in supported if isa in AUTO_ORDER), key=AUTO_ORDER.index)
    if requested not in supported:
        raise KernelIsaError(
            f"{ISA_ENV}={requested} asks for kernels this CPU or build lacks; it runs {', '.join(supported)}"
        )
    return requested


def requested_isa() -> str:
    """What the environment asks for ("auto" when EMBER_KERNEL_ISA is unset or empty)."""
    return os.environ.get(ISA_ENV, "").strip().lower() or "auto"
