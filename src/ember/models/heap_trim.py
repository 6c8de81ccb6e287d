"""Handing the heap's free memory back to the OS once a model is loaded (glibc's malloc_trim).

A load frees hundreds of MiB of temporaries (file blocks replaced by kernel stand-ins, raw blocks replaced by
tiles, fused q|k|v copies) in chunks below glibc's mmap threshold, which free() keeps inside the heap: for
Qwen2.5-0.5B Q4_K_M that was ~300 MiB of RSS holding nothing (docs/decisions.md, server RSS)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators return memory themselves
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Returns the heap's free pages to the OS; False where the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
