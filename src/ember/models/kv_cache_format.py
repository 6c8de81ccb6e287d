"""How the paged KV cache stores a head row (one token's key or value for one KV head): fp32, fp16, bf16, or q8_0
(int8 values with one fp32 scale per head row, llama.cpp's `-ctk/-ctv q8_0` idea); and what `auto` picks.

A q8_0 cache tensor is int8 [num_blocks, block_size, num_kv_heads, head_dim + 4]: each row's head_dim values,
then its scale's four bytes. Encoding here and in the native step (csrc/quant_kernels/decode_attention_avx2.cpp)
gives the same bits, so both paths may write and read the same cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_Q8_SCALE_BYTES = 4


@dataclass(frozen=True)
class KVCacheFormat:
    """One storage format of the KV cache's head rows."""

    name: str  # fp32 | fp16 | bf16 | q8_0
    storage: torch.dtype  # the cache tensor's dtype
    native_id: int  # KVDtype in csrc/quant_kernels/kv_format.h

    @property
    def quantized(self) -> bool:
        return self.name == "q8_0"

    def row_width(self, head_dim: int) -> int:
        """Elements of the cache tensor's last dimension."""
        return head_dim + _Q8_SCALE_BYTES if self.quantized else head_dim

    def row_bytes(self, head_dim: int) -> int:
        return self.row_width(head_dim) * torch.empty((), dtype=self.storage).element_size()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., head_dim] float -> stored rows [..., row_width] of the cache's dtype."""
        if not self.quantized:
            return x.to(self.storage)
        x = x.float()
        scale = x.abs().amax(dim=-1, keepdim=True) / 127.0  # [..., 1]
        # Division, not a reciprocal, so the native step computes the same bits; rows of zeros keep scale 0.
        q = torch.where(scale > 0, torch.round(x / scale), torch.zeros_like(x)).clamp_(-127, 127)
        scale_bytes = scale.contiguous().view(torch.int8)  # [..., 4]
        return torch.cat([q.to(torch.int8), scale_bytes], dim=-1)

    def decode(self, rows: torch.Tensor, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
        """Stored rows [..., row_width] -> values [..., head_dim] in `dtype`."""
        if not self.quantized:
            return rows.to(dtype)
        scale = rows[..., head_dim:].contiguous().view(torch.float32)  # [..., 1]
        return (rows[..., :head_dim].to(torch.float32) * scale).to(dtype)


FP32 = KVCacheFormat("fp32", torch.float32, 0)
FP16 = KVCacheFormat("fp16", torch.float16, 1)
BF16 = KVCacheFormat("bf16", torch.bfloat16, 2)
Q8_0 = KVCacheFormat("q8_0", torch.int8, 3)
_BY_NAME = {f.name: f for f in (FP32, FP16, BF16, Q8_0)}
_BY_STORAGE = {f.storage: f for f in (FP32, FP16, BF16, Q8_0)}
KV_STORAGE_DTYPES = frozenset(_BY_STORAGE)
"""The tensor dtypes a KV cache may have (int8: q8_0)."""


def kv_cache_format(name: str) -> KVCacheFormat:
    """The format named fp32, fp16, bf16 or q8_0 (resolve `auto` first)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown KV cache dtype {name!r}; expected auto or one of {', '.join(_BY_NAME)}"
        ) from None


def kv_cache_format_for(dtype: torch.dtype | KVCacheFormat) -> KVCacheFormat:
    """The format of a cache tensor of `dtype` (int8 is q8_0); a format stands for itself."""
    if isinstance(dtype, KVCacheFormat):
        return dtype
    try:
        return _BY_STORAGE[dtype]
    except KeyError:
        raise ValueError(f"no KV cache format stores {dtype}") from None


def format_of_cache(cache: torch.Tensor) -> KVCacheFormat:
    """The format a cache tensor holds, from its dtype."""
    return kv_cache_format_for(cache.dtype)


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype, fused_decode: bool) -> KVCacheFormat:
    """`auto`: fp16 for an fp32 model whose decodes run on the fused native step (so the CPU has AVX2 + F16C, which
    converts in registers for free: half the bytes per step and 2x the tokens per GiB, at fp16's ~1e-3 relative
    error), else the model's own dtype, as vLLM's auto does. q8_0 is never automatic: it trades accuracy."""
    if name != "auto":
        return kv_cache_format(name)
    if model_dtype == torch.float32 and fused_decode:
        return FP16
    return _BY_STORAGE.get(model_dtype, FP32)
