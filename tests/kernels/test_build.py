"""The extension is built wherever a compiler exists, and picks the SIMD kernels on a CPU that has them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ember import kernels


def test_kernels_are_built_where_a_compiler_is() -> None:
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler here: nothing to build, the torch fallback runs")
    assert kernels.available(), "a C++ compiler is present but ember.kernels._quant_kernels did not build"


def test_avx2_kernels_are_chosen_on_an_avx2_cpu(native_kernels: None) -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(cpuinfo.read_text().split())
    expected = "avx2" if {"avx2", "fma", "f16c"} <= flags else "scalar"
    assert kernels.simd_level() == expected


def test_every_kernel_family_the_cpu_has_is_offered(native_kernels: None) -> None:
    """AVX-512 VNNI is offered exactly where the CPU flags say so, and `auto` takes the fastest family offered (every
    family returns the same bits: test_quant_matmul.py)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(cpuinfo.read_text().split())
    expected = ["scalar"]
    if {"avx2", "fma", "f16c"} <= flags:
        expected.append("avx2")
        if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags:
            expected.append("avx512_vnni")
    assert list(kernels.supported_isas_here()) == expected
    print(f"kernel families on this CPU: {', '.join(expected)}")
    assert kernels.chosen_isa() == expected[-1] or os.environ.get("EMBER_KERNEL_ISA")
