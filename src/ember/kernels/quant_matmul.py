"""y = x @ W^T with W kept in its GGUF block format and x quantized per 32-value block to int8.

The native extension (csrc/quant_kernels) regroups a weight once into 8-row interleaved tiles
(`prepare_weight`); every matmul then runs integer SIMD dot products over those tiles on OpenMP threads.
Without the extension (no compiler at install time) the same calls fall back to decoding the blocks to
fp32 and one torch matmul."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from ember.kernels.kernel_isa import requested_isa, resolve_isa, supported_isas
from ember.kernels.kernel_layout import KernelLayout, checked_layout
from ember.kernels.reference import check_weight_blocks, dequantize_blocks

# torch is imported first on purpose: the extension links libgomp.so.1, which then resolves to the copy torch
# already loaded, so kernels and torch ops share one OpenMP runtime instead of two competing thread pools.
try:
    from ember.kernels import _quant_kernels as _native
except ImportError:  # built without a compiler: the reference path serves every call
    _native = None

# The ids come from the extension (quant_layout.h defines them once); without it no id is ever passed.
KERNEL_LAYOUT: KernelLayout | None = None if _native is None else checked_layout(_native)
QTYPE_IDS: dict[str, int] = (
    {} if KERNEL_LAYOUT is None else {name: qtype.id for name, qtype in KERNEL_LAYOUT.qtypes.items()}
)
# {name: id} of the kernel families this CPU runs (kernel_isa.py); "auto" is the weight's own, chosen at prepare.
ISA_IDS: dict[str, int] = supported_isas(_native)
BACKENDS = ("auto", "avx512_vnni", "avx2", "scalar")


def available() -> bool:
    """True when the native kernels were built and can be loaded."""
    return _native is not None


def simd_level() -> str:
    """'avx2' or 'scalar' for the kernels `auto` picks on this CPU; 'none' without the extension."""
    return "none" if _native is None else str(_native.simd_level())


def supported_isas_here() -> tuple[str, ...]:
    """The kernel families this build runs on this CPU, portable first (empty without the extension)."""
    return tuple(ISA_IDS)


def chosen_isa() -> str:
    """The family new weights are prepared for: the fastest here, unless EMBER_KERNEL_ISA caps it (read now,
    so a model loaded after the variable is set follows it); 'none' without the extension."""
    return "none" if _native is None else resolve_isa(requested_isa(), ISA_IDS)


def supports(qtype: str) -> bool:
    """Whether `qtype` (a GGUF type name such as "Q4_1") runs on the native kernels."""
    return _native is not None and qtype in QTYPE_IDS


def native_module() -> ModuleType:
    if _native is None:
        raise RuntimeError("ember's quantized kernels are not built (no C++ compiler at install time)")
    return _native


@dataclass(frozen=True)
class PreparedQuantWeight:
    """A weight ready for `quant_matmul_prepared`: the interleaved tiles when the kernels are built,
    else the raw GGUF blocks (served by the reference path)."""

    qtype: str
    n: int  # out_features
    k: int  # in_features
    data: torch.Tensor  # uint8; interleaved tiles if `interleaved`, else raw blocks [n, row_bytes]
    interleaved: bool
    isa: str = "none"  # the kernel family `auto` runs it on (kernel_isa.py); "none" for raw blocks

    @property
    def nbytes(self) -> int:
        return self.data.numel()


def prepare_weight(w_data: torch.Tensor, qtype: str, n: int, k: int) -> PreparedQuantWeight:
    """One-time regrouping of raw GGUF blocks (uint8 [n, row_bytes]) for the kernels. The input is not kept.
    The weight runs on `chosen_isa()` unless a call names another family."""
    check_weight_blocks(w_data, qtype, n, k)
    if not supports(qtype):
        return PreparedQuantWeight(qtype, n, k, w_data, interleaved=False)
    native = native_module()
    raw = w_data.contiguous()
    packed = torch.empty(native.repacked_nbytes(QTYPE_IDS[qtype], n, k), dtype=torch.uint8)
    native.repack(QTYPE_IDS[qtype], raw.data_ptr(), n, k, packed.data_ptr())
    return PreparedQuantWeight(qtype, n, k, packed, interleaved=True, isa=chosen_isa())


def quant_matmul_prepared(
    x: torch.Tensor,
    weight: PreparedQuantWeight,
    num_threads: int | None = None,
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y [M, n] fp32 = x [M, k] fp32 @ W^T, written into `out` when given (a contiguous fp32 [M, n]).

    num_threads defaults to torch.get_num_threads(): call from the thread that runs torch's ops so the two
    share one OpenMP team. backend "avx512_vnni" / "avx2" / "scalar" forces a kernel family ("auto": the one the
    weight was prepared for).
    This runs once per linear layer per step, so its checks are the cheap ones (about 1 us in all)."""
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != weight.k or not x.is_cpu:
        raise ValueError(f"x must be a float32 CPU tensor [M, {weight.k}], got {x.dtype} {tuple(x.shape)}")
    if not weight.interleaved:
        if backend != "auto":
            raise ValueError(f"backend {backend!r} needs the native kernels, which are not available")
        return torch.matmul(x, dequantize_blocks(weight.data, weight.qtype, weight.n, weight.k).t(), out=out)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    isa = weight.isa if backend == "auto" else backend
    if isa not in ISA_IDS:
        raise ValueError(f"backend {isa!r} does not run on this CPU or build; it runs {', '.join(ISA_IDS)}")
    threads = torch.get_num_threads() if num_threads is None else num_threads
    m = x.shape[0]
    if out is None:
        out = torch.empty(m, weight.n, dtype=torch.float32)
    elif (
        out.dtype != torch.float32 or out.shape != (m, weight.n) or not out.is_contiguous() or not out.is_cpu
    ):
        raise ValueError(
            f"out must be a contiguous float32 CPU tensor [{m}, {weight.n}], got {tuple(out.shape)}"
        )
    if m == 0:
        return out
    if not x.is_contiguous():
        x = x.contiguous()
    # The extension validates the shapes, thread count and ISA again and raises ValueError itself.
    _native.matmul(
        QTYPE_IDS[weight.qtype],
        x.data_ptr(),
        m,
        weight.k,
        weight.data.data_ptr(),
        weight.n,
        out.data_ptr(),
        threads,
        ISA_IDS[isa],
    )
    return out


def quant_matmul(
    x: torch.Tensor, w_data: torch.Tensor, qtype: str, n: int, k: int, num_threads: int | None = None
) -> torch.Tensor:
    """y [M, n] = x [M, k] @ W^T straight from raw blocks. Regroups W on every call (about the cost of
    reading it twice): layers should call `prepare_weight` once and `quant_matmul_prepared` per step."""
    return quant_matmul_prepared(x, prepare_weight(w_data, qtype, n, k), num_threads=num_threads)
