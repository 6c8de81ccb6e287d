"""Builds ember's one native extension, the quantized matmul kernels (csrc/quant_kernels).

Metadata lives in pyproject.toml. The extension is optional: without a working C++ compiler the install
still succeeds and ember.kernels reports available() == False (the fp32 reference path is used). With
EMBER_REQUIRE_KERNELS=1 (what `make test` sets where a compiler exists) a failed build fails the install.
The AVX2 files alone are compiled with -mavx2 -mfma -mf16c, the AVX-512 VNNI file alone with its -mavx512*
flags; which kernels run is decided at run time.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE_DIR = Path("csrc") / "quant_kernels"
AVX2_SOURCES = [
    str(SOURCE_DIR / name)
    for name in (
        "kernels_avx2.cpp",
        "decode_ops_avx2.cpp",
        "decode_step_avx2.cpp",
        "decode_attention_avx2.cpp",
        "decode_attention_batch.cpp",
        "decode_attention_plan.cpp",
        "decode_lora_avx2.cpp",
        "prefill_attention_avx2.cpp",
    )
]
COMMON_FLAGS = ["-O3", "-std=c++17", "-fno-math-errno"]
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c"]
# The AVX-512 VNNI matmuls (vpdpbusd), the AVX-512 decode attention and the AVX-512 F prefill attention alone get
# these; module.cpp dispatches to them after a run-time CPU check.
AVX512_VNNI_SOURCES = [
    str(SOURCE_DIR / name)
    for name in ("kernels_avx512_vnni.cpp", "decode_attention_avx512.cpp", "prefill_attention_avx512.cpp")
]
AVX512_VNNI_FLAGS = AVX2_FLAGS + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]


def _is_x86_64() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64"}


class BuildQuantKernels(build_ext):
    """Compiles the AVX2 source with its own flags and uses OpenMP when the compiler has it."""

    def build_extension(self, ext: Extension) -> None:
        openmp = self._compiler_accepts(["-fopenmp"])
        flags = COMMON_FLAGS + (["-fopenmp"] if openmp else [])
        ext.extra_compile_args = flags
        ext.extra_link_args = ["-fopenmp"] if openmp else []
        if _is_x86_64() and self._compiler_accepts(AVX2_FLAGS):
            ext.define_macros = [("EMBER_HAVE_AVX2", "1")]
            # Decided before anything compiles: the AVX2 decode step dispatches to the AVX-512 matmuls too.
            avx512_vnni = self._compiler_accepts(AVX512_VNNI_FLAGS)
            if avx512_vnni:
                ext.define_macros.append(("EMBER_HAVE_AVX512_VNNI", "1"))
            ext.extra_objects = self.compiler.compile(
                AVX2_SOURCES,
                output_dir=self.build_temp,
                macros=ext.define_macros,
                include_dirs=ext.include_dirs,
                extra_postargs=flags + AVX2_FLAGS,
            )
            if avx512_vnni:
                ext.extra_objects += self.compiler.compile(
                    AVX512_VNNI_SOURCES,
                    output_dir=self.build_temp,
                    macros=ext.define_macros,
                    include_dirs=ext.include_dirs,
                    extra_postargs=flags + AVX512_VNNI_FLAGS,
                )
        super().build_extension(ext)

    def _compiler_accepts(self, flags: list[str]) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.cpp"
            probe.write_text("int main() { return 0; }\n")
            try:
                self.compiler.compile([str(probe)], output_dir=tmp, extra_postargs=flags)
            except Exception:
                return False
        return True


setup(
    ext_modules=[
        Extension(
            "ember.kernels._quant_kernels",
            sources=[
                str(SOURCE_DIR / "module.cpp"),
                str(SOURCE_DIR / "repack.cpp"),
                str(SOURCE_DIR / "kernels_scalar.cpp"),
                str(SOURCE_DIR / "prefill_attention_check.cpp"),
            ],
            include_dirs=[str(SOURCE_DIR)],
            depends=[str(p) for p in SOURCE_DIR.glob("*")],
            language="c++",
            optional=os.environ.get("EMBER_REQUIRE_KERNELS") != "1",
        )
    ],
    cmdclass={"build_ext": BuildQuantKernels},
)
