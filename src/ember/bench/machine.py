"""What the figures ran on: the CPU (lscpu's model name and SIMD flags), ember's kernel paths, and the weight
tensors left on a slow path, told by the loader's own log lines (captured while the model loads)."""

from __future__ import annotations

import logging
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# The flags that decide which kernels can run, in the order a reader compares machines by.
SIMD_FLAGS = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip


def lscpu_fields() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = {}
    for line in out.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def cpu_name() -> str:
    """lscpu's model name (the machine's CPU changes between sessions): what every figure is named with."""
    return lscpu_fields().get("Model name") or platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1-minute load average, printed beside figures taken on a shared machine."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def cpu_description(fields: dict[str, str]) -> str:
    """'AMD EPYC (avx2 fma ... avx512_vnni)': the model name and the SIMD flags this CPU has."""
    flags = set(fields.get("Flags", "").split())
    present = " ".join(flag for flag in SIMD_FLAGS if flag in flags) or "no AVX2"
    return f"{fields.get('Model name', 'unknown CPU')} ({present})"


@dataclass
class LoadLog:
    """The loader's lines about which linears run where (ember.models.loader.enable_quant_kernels)."""

    lines: list[str] = field(default_factory=list)

    def summary(self, kernel_linears: int, weight_format: str) -> str:
        if weight_format != "packed":
            return f"weights held as {weight_format}: every linear is a torch matmul, no int8 kernels"
        if not self.lines:
            return f"all {kernel_linears} linears on the int8 kernels, none converted, none on a slow path"
        return f"{kernel_linears} linears on the int8 kernels; " + "; ".join(self.lines)


class _Collect(logging.Handler):
    def __init__(self, into: LoadLog) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.funcName == "enable_quant_kernels":
            self.into.lines.append(record.getMessage())


@contextmanager
def capture_load_log() -> Iterator[LoadLog]:
    """Collects what the loader logs about kernel and slow-path linears while the block runs."""
    logger = logging.getLogger("ember.models.loader")
    collected = LoadLog()
    handler = _Collect(collected)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield collected
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def ember_kernel_paths(simd_level: str, fused_steps: int, module_steps: int, split_steps: int = 0) -> str:
    """Which of ember's paths ran the engine-only rows (split: the fused step beside the modules in one step)."""
    total = fused_steps + module_steps + split_steps
    share = f"{fused_steps} of {total} engine steps" if total else "no engine steps"
    split = f", split with the modules: {split_steps}" if split_steps else ""
    return f"int8 block matmuls: {simd_level}; fused native decode step: {share}{split}"
