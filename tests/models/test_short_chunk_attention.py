"""A short chunk over cached context (a speculative verification's k + 1 tokens) attends exactly as its tokens
would one by one, each as a decode over its own prefix, also when batched with plain decodes."""

from __future__ import annotations

import math

import pytest
import torch

from ember.models.attention import TorchAttentionBackend, write_kv_cache
from ember.models.attention_metadata import AttentionMetadata

BLOCK = 4


def _meta(
    query_lens: list[int], context_lens: list[int], tables: torch.Tensor, slots: torch.Tensor
) -> AttentionMetadata:
    lens = torch.tensor(query_lens)
    start = torch.zeros(len(query_lens) + 1, dtype=torch.int64)
    start[1:] = lens.cumsum(0)
    return AttentionMetadata(
        query_lens, context_lens, start, torch.tensor(context_lens), tables, slots, BLOCK
    )


def _slots(table: torch.Tensor, positions: range) -> torch.Tensor:
    return torch.tensor([int(table[p // BLOCK]) * BLOCK + p % BLOCK for p in positions])


@pytest.mark.parametrize(("num_queries", "context_len"), [(2, 3), (5, 37), (9, 64), (16, 17)])
def test_short_chunk_matches_its_tokens_decoded_one_by_one(num_queries: int, context_len: int) -> None:
    gen = torch.Generator().manual_seed(num_queries)
    heads, kv_heads, dim = 6, 2, 8
    key_cache = torch.randn(48, BLOCK, kv_heads, dim, generator=gen)
    value_cache = torch.randn(48, BLOCK, kv_heads, dim, generator=gen)
    chunk_table = torch.arange(1, 1 + math.ceil(context_len / BLOCK))
    decode_table = torch.arange(30, 40)
    q = torch.randn(num_queries + 1, heads, dim, generator=gen)  # the chunk, then one plain decode
    k = torch.randn(num_queries + 1, kv_heads, dim, generator=gen)
    v = torch.randn(num_queries + 1, kv_heads, dim, generator=gen)
    first = context_len - num_queries
    slots = torch.cat([_slots(chunk_table, range(first, context_len)), _slots(decode_table, range(20, 21))])
    width = max(len(chunk_table), len(decode_table))
    tables = torch.zeros(2, width, dtype=torch.int64)
    tables[0, : len(chunk_table)] = chunk_table
    tables[1, : len(decode_table)] = decode_table
    backend = TorchAttentionBackend()
    batched = backend.forward(
        q,
        k,
        v,
        _meta([num_queries, 1], [context_len, 21], tables, slots),
        (key_cache.clone(), value_cache.clone()),
        0.3,
    )

    caches = (key_cache.clone(), value_cache.clone())
    write_kv_cache(*caches, k, v, slots)
    one_by_one = [
        backend.forward(
            q[i : i + 1],
            k[i : i + 1],
            v[i : i + 1],
            _meta([1], [first + i + 1], chunk_table.unsqueeze(0), slots[i : i + 1]),
            caches,
            0.3,
        )
        for i in range(num_queries)
    ]
    decode = backend.forward(
        q[-1:], k[-1:], v[-1:], _meta([1], [21], decode_table.unsqueeze(0), slots[-1:]), caches, 0.3
    )
    torch.testing.assert_close(batched, torch.cat([*one_by_one, decode]), rtol=1e-5, atol=1e-5)
