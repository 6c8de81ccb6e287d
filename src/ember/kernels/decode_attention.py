"""The fused decode step's attention phase on its own: new tokens' queries over the paged KV cache, on a chosen
instruction set ("avx2", 8 floats a register, or "avx512", 16), as the step runs it (split-KV flash-decoding,
csrc/quant_kernels/decode_attention*). The tests compare every set and KV format with the fp32 reference through
it; the benchmark times it without the rest of the step."""

from __future__ import annotations

import torch

from ember.kernels.quant_matmul import available, native_module
from ember.models.kv_cache_format import format_of_cache


def attention_isas() -> dict[str, int]:
    """{name: id} of the instruction sets the decode attention runs on here, portable first ({} without kernels);
    "avx512" needs a head_dim that is a multiple of 16."""
    if not available():
        return {}
    return {str(k): int(v) for k, v in native_module().attention_isas().items()}


def decode_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    isa: str,
    num_threads: int = 1,
    splits: int = 0,
) -> torch.Tensor:
    """q [m, num_heads, head_dim] fp32 -> out [m, num_heads, head_dim]: token t's softmax(scale q k^T) v over
    positions 0 .. context_lens[t] - 1 of its block_tables row. The caches are [num_blocks, block_size,
    num_kv_heads, row] of one KV format (kv_cache_format.py). splits <= 0: as many as the step would use."""
    supported = attention_isas()
    if isa not in supported:
        raise ValueError(
            f"the decode attention runs on {', '.join(supported) or 'nothing here'}, not {isa!r}"
        )
    m, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = key_cache.shape
    fmt = format_of_cache(key_cache)
    if q.dtype != torch.float32 or not q.is_contiguous():
        raise ValueError("q must be a contiguous float32 tensor")
    if num_heads % num_kv_heads != 0 or head_dim % 8 != 0:
        raise ValueError("num_heads must be a multiple of num_kv_heads and head_dim of 8")
    if isa == "avx512" and head_dim % 16 != 0:
        raise ValueError(f"avx512 attention needs head_dim a multiple of 16, got {head_dim}")
    row = fmt.row_width(head_dim)
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if tuple(cache.shape) != (num_blocks, block_size, num_kv_heads, row) or not cache.is_contiguous():
            raise ValueError(
                f"{name} must be a contiguous [{num_blocks}, {block_size}, {num_kv_heads}, {row}] tensor"
            )
        if format_of_cache(cache) != fmt:
            raise ValueError("key_cache and value_cache must hold the same KV format")
    for name, ints in (("block_tables", block_tables), ("context_lens", context_lens)):
        if ints.dtype != torch.int64 or not ints.is_contiguous() or ints.shape[0] != m:
            raise ValueError(f"{name} must be a contiguous int64 tensor with a row per token")
    lens = context_lens.tolist()
    for t, length in enumerate(lens):
        used = -(-length // block_size)
        if length < 1 or used > block_tables.shape[1]:
            raise ValueError(f"context_lens[{t}] = {length} does not fit its block table")
        ids = block_tables[t, :used]
        if bool((ids < 0).any()) or bool((ids >= num_blocks).any()):
            raise ValueError(f"block_tables[{t}] names a block outside the cache")
    out = torch.empty_like(q)
    native_module().decode_attention(
        m,
        num_heads,
        num_kv_heads,
        head_dim,
        scale,
        q.data_ptr(),
        key_cache.data_ptr(),
        value_cache.data_ptr(),
        block_tables.data_ptr(),
        block_tables.shape[1],
        context_lens.data_ptr(),
        block_size,
        fmt.native_id,
        out.data_ptr(),
        supported[isa],
        num_threads,
        splits,
    )
    return out


def attention_runs(
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    num_threads: int = 1,
    splits: int = 0,
) -> list[int]:
    """The rows of each work item decode_attention runs these tokens in: consecutive tokens of one sequence
    (the same blocks, the same split bounds) share an item, which reads each key and value row once for all."""
    if not attention_isas():
        raise ValueError("the decode attention needs the native AVX2 kernels")
    for name, ints in (("block_tables", block_tables), ("context_lens", context_lens)):
        if ints.dtype != torch.int64 or not ints.is_contiguous():
            raise ValueError(f"{name} must be a contiguous int64 tensor")
    m = context_lens.shape[0]
    if block_tables.shape[0] != m or int(context_lens.min()) < 1:
        raise ValueError("one block table row and a context length >= 1 per token")
    if int(context_lens.max()) > block_tables.shape[1] * block_size:
        raise ValueError("a context length does not fit its block table")
    rows = native_module().attention_runs(
        m,
        block_tables.data_ptr(),
        block_tables.shape[1],
        context_lens.data_ptr(),
        block_size,
        num_threads,
        splits,
    )
    return [int(r) for r in rows]
