"""A server process's memory as the kernel counts it: resident now (VmRSS) and at its peak (VmHWM), from
/proc/<pid>/status, read for ember's server and llama-server alike after the same workloads; and the KV pool
each one allocated (both fill theirs at start-up, so all of it is resident), which the two size differently."""

from __future__ import annotations

from dataclasses import dataclass

from ember.bench.llama_server import LLAMA_KV_TYPES, LLAMA_KV_VALUE_BYTES
from ember.models.config import ModelConfig


@dataclass(frozen=True)
class ProcessMemory:
    rss_mib: float  # VmRSS: resident now
    peak_mib: float  # VmHWM: the most it was ever resident (loading included)
    kv_pool_mib: float  # the KV cache it allocated, part of rss_mib


def read_process_memory(pid: int, kv_pool_mib: float) -> ProcessMemory | None:
    """None where there is no /proc (not Linux) or the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return None
    try:
        return ProcessMemory(_mib(fields["VmRSS"]), _mib(fields["VmHWM"]), kv_pool_mib)
    except (KeyError, ValueError):  # a zombie has no Vm* lines
        return None


def _mib(field: str) -> float:
    value, unit = field.split()  # "123456 kB"
    if unit != "kB":
        raise ValueError(f"unexpected unit {unit!r} in /proc status")
    return int(value) / 1024


def llama_kv_mib(config: ModelConfig, tokens: int, kv_cache_dtype: str = "auto") -> float:
    """llama-server's KV cache: `tokens` slots of keys and values in every layer, of the type `ember bench
    --kv-cache-dtype` gave it (--cache-type-k/-v)."""
    values = tokens * config.num_layers * 2 * config.num_kv_heads * config.head_dim
    return values * LLAMA_KV_VALUE_BYTES[LLAMA_KV_TYPES[kv_cache_dtype]] / 2**20
