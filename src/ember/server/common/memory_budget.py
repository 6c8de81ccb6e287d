"""Whether one more model fits in memory, decided before it loads: its estimated size (weights as they will be
held, plus its KV cache budget) against the server's memory budget and the memory the system has available now.

A load that would not fit is refused with the numbers instead of being tried: a process that runs out of memory
halfway through a load is killed by the OOM killer with every other model in it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
# Left to the rest of the process (HTTP server, tokenizers, activations of a step) and to the system.
HEADROOM_BYTES = GIB // 4
_FLOAT_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


class MemoryBudgetError(Exception):
    """A load refused because it would not fit; the message names the model and the numbers."""


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes


def weights_bytes(path: str) -> int:
    """The weights' size once loaded: a GGUF stays in its block formats (its file size); a safetensors folder
    is served as fp32 (every tensor's element count x 4, from the files' headers) unless it is quantized."""
    source = Path(path)
    if source.is_file():
        return source.stat().st_size
    total = 0
    for file in sorted(source.glob("*.safetensors")):
        total += _safetensors_fp32_bytes(file)
    return total


def _safetensors_fp32_bytes(file: Path) -> int:
    """The tensors of one safetensors file held as fp32, read from its JSON header (8-byte length first)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        stored = _FLOAT_BYTES.get(entry["dtype"], 4)
        total += (end - start) * max(4, stored) // stored
    return total


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo: what the system can give without swapping."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62  # no /proc: the budget flag alone decides


def check_fits(
    name: str, estimate: MemoryEstimate, loaded_bytes: int, budget_bytes: int | None, available: int
) -> None:
    """MemoryBudgetError unless the model fits beside the loaded ones (`loaded_bytes`, their estimates) under
    `budget_bytes` (--memory-budget-gib; None: no budget of our own) and in the memory available now."""
    need = estimate.total_bytes
    detail = (
        f"needs ~{need / GIB:.3f} GiB (weights {estimate.weights_bytes / GIB:.3f} GiB + KV cache "
        f"{estimate.kv_cache_bytes / GIB:.3f} GiB)"
    )
    if budget_bytes is not None and loaded_bytes + need > budget_bytes:
        raise MemoryBudgetError(
            f"cannot load the model {name!r}: it {detail}, and the models loaded already take "
            f"~{loaded_bytes / GIB:.3f} GiB of the {budget_bytes / GIB:.3f} GiB memory budget (--memory-budget-gib)"
        )
    if need + HEADROOM_BYTES > available:
        raise MemoryBudgetError(
            f"cannot load the model {name!r}: it {detail}, and the system has {available / GIB:.3f} GiB "
            f"available ({HEADROOM_BYTES / GIB:.2f} GiB kept free)"
        )
