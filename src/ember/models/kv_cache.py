"""The paged KV cache: per layer, one key and one value tensor of fixed-size blocks of token slots.

A token's slot is `block_id * block_size + offset`; the engine's block manager decides which blocks a
sequence owns and hands them to the model as a block table (see AttentionMetadata).
"""

from __future__ import annotations

import torch

from ember.models.config import ModelConfig
from ember.models.kv_cache_format import KVCacheFormat, kv_cache_format_for


def kv_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype | KVCacheFormat) -> int:
    """Bytes one block takes over all layers, keys and values together; the engine sizes its pool with it
    (a cache dtype is its format: int8 is q8_0)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    row_bytes = kv_cache_format_for(dtype).row_bytes(config.head_dim)
    per_layer = 2 * block_size * config.num_kv_heads * row_bytes
    return config.num_layers * per_layer


def allocate_kv_caches(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype | KVCacheFormat,
    device: torch.device | str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (keys, values) pair per layer, each [num_blocks, block_size, num_kv_heads, row_width] (head_dim, or
    head_dim + 4 for q8_0's scale bytes), zeroed."""
    if num_blocks <= 0:
        raise ValueError(f"num_blocks must be positive, got {num_blocks}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    kv_format = kv_cache_format_for(dtype)
    shape = (num_blocks, block_size, config.num_kv_heads, kv_format.row_width(config.head_dim))
    # empty + an explicit fill: torch.zeros may get lazily-mapped zero pages from calloc, and then the first
    # requests pay a page fault per 4 KiB of cache they touch (seconds for a 1 GiB cache) instead of start-up.
    return [
        (
            torch.empty(shape, dtype=kv_format.storage, device=device).fill_(0),
            torch.empty(shape, dtype=kv_format.storage, device=device).fill_(0),
        )
        for _ in range(config.num_layers)
    ]
