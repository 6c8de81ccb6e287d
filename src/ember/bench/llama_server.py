"""llama.cpp's own `llama-server` as a peer: the same GGUF, the same threads, the same client and workloads.

Started on a free loopback port with one unified KV cache (`--kv-unified`) big enough for the longest context
and for every stream at once, and as many slots as the most streams any workload runs, so no request of ours
waits for a slot. docs/benchmarks.md has the build recipe."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# ember's --kv-cache-dtype names -> llama.cpp's --cache-type-k/-v names (its q8_0 keeps a scale per 32 values, ours
# one per head row); auto is llama-server's own default, f16, which it gets without the flags
LLAMA_KV_TYPES = {"auto": "f16", "fp32": "f32", "fp16": "f16", "bf16": "bf16", "q8_0": "q8_0"}
# bytes one value of each llama.cpp KV type takes (q8_0: 32 int8 values and one fp16 scale a block)
LLAMA_KV_VALUE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}


def check_binary(path: str) -> str:
    """The path of an executable llama-server, or ValueError saying what is wrong with it."""
    if not os.path.isfile(path):
        raise ValueError(f"--llama-server {path}: no such file (docs/benchmarks.md shows how to build it)")
    if not os.access(path, os.X_OK):
        raise ValueError(f"--llama-server {path}: not executable")
    return os.path.abspath(path)


@dataclass(frozen=True)
class LlamaServerLaunch:
    """The llama-server command line for one benchmark run."""

    binary: str
    gguf: str
    threads: int
    context_tokens: int  # the unified KV cache, shared by all slots (each slot is capped at the model's own)
    slots: int
    kv_cache_dtype: str = "auto"  # ember's name for the KV type both servers use; auto: each one's default
    start_timeout_s: float = 300.0

    def command(self, port: int, api_key: str) -> list[str]:
        command = [self.binary, "--model", self.gguf, "--host", "127.0.0.1", "--port", str(port)]
        command += ["--threads", str(self.threads), "--threads-batch", str(self.threads)]
        command += ["--ctx-size", str(self.context_tokens), "--parallel", str(self.slots)]
        if self.kv_cache_dtype != "auto":
            kv_type = LLAMA_KV_TYPES[self.kv_cache_dtype]
            command += ["--cache-type-k", kv_type, "--cache-type-v", kv_type]
        # llama.cpp's parser takes no "--name=value"; it reads the next argument as the value, even one that
        # starts with "-" (one key in 32 does)
        command += ["--api-key", api_key, "--kv-unified", "--no-webui"]
        return command


def build_flags(binary: str) -> str:
    """The SIMD options llama-server was built with (GGML_AVX2=ON ...), from the CMakeCache.txt of its build
    folder (the binary is in build/bin/): its own start-up log names its CPU features only at trace verbosity."""
    for folder in Path(binary).resolve().parents[:3]:
        cache = folder / "CMakeCache.txt"
        if cache.is_file():
            options = re.findall(
                r"^(GGML_(?:AVX\w*|FMA|F16C|NATIVE|AMX\w*|BMI2)):BOOL=(ON|OFF)$", cache.read_text(), re.M
            )
            return (
                " ".join(f"{name}={value}" for name, value in options if value == "ON")
                or "no SIMD options ON"
            )
    return "build options unknown (no CMakeCache.txt near the binary)"
