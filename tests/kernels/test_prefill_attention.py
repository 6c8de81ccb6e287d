"""The native prefill attention (csrc/quant_kernels/prefill_attention*.cpp) against references on fresh random
inputs, on every instruction set this CPU runs it on: a float64 causal softmax over exactly the rows the cache
holds, for every KV dtype, GQA groups 1 / 3 / 4, head_dim 64 and 128, block sizes 16 / 32 / 5, and batches of
several chunks (a whole short prompt, chunks starting mid-block, lengths off the tile sizes); and the torch
backend's reference path on one mixed batch (decodes, a short verification chunk, prefill chunks)."""

from __future__ import annotations

import math

import pytest
import torch

from ember.kernels.prefill_attention import NativePrefillAttention, prefill_isas_here
from ember.models.attention import TorchAttentionBackend, write_kv_cache
from ember.models.attention_metadata import AttentionMetadata
from ember.models.kv_cache_format import BF16, FP16, FP32, Q8_0, KVCacheFormat

ISAS = prefill_isas_here()
pytestmark = pytest.mark.skipif(not ISAS, reason="the native kernels are not built or this CPU lacks AVX2")

FORMATS = (FP32, FP16, BF16, Q8_0)
# (query heads, kv heads, head_dim, block_size): groups of 3 (the default model's), 1 and 4.
SHAPES = ((9, 3, 64, 16), (4, 4, 128, 32), (8, 2, 64, 5))
# (query_len, context_len) per sequence of one batch: a whole 77-token prompt, a chunk starting mid-block after
# 200 cached tokens, one starting at 5 whose 130 queries span several query tiles and a partial last key tile, a
# 2-token chunk; none a multiple of the tiles (96 query rows, 64 keys).
CHUNKS = ((77, 77), (50, 250), (130, 135), (2, 19))


def _batch(
    kv_format: KVCacheFormat, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """q [T, Hq, D] of every chunk, the caches with every sequence's whole context written (blocks shuffled,
    block 0 left unused as the engine's null block), the block tables, and each sequence's slots."""
    gen = torch.Generator().manual_seed(seed)
    tables = [math.ceil(context / block_size) for _, context in CHUNKS]
    num_blocks = sum(tables) + 1
    shape = (num_blocks, block_size, num_kv_heads, kv_format.row_width(head_dim))
    key_cache = torch.zeros(shape, dtype=kv_format.storage)
    value_cache = torch.zeros(shape, dtype=kv_format.storage)
    order = torch.randperm(num_blocks - 1, generator=gen) + 1
    block_tables = torch.zeros(len(CHUNKS), max(tables), dtype=torch.int64)
    slots = []
    first = 0
    for seq, (_, context) in enumerate(CHUNKS):
        blocks = order[first : first + tables[seq]]
        first += tables[seq]
        block_tables[seq, : tables[seq]] = blocks
        positions = torch.arange(context)
        slots.append(blocks[positions // block_size] * block_size + positions % block_size)
        keys = torch.randn(context, num_kv_heads, head_dim, generator=gen) * 2  # [C, Hkv, D]
        values = torch.randn(context, num_kv_heads, head_dim, generator=gen)
        write_kv_cache(key_cache, value_cache, keys, values, slots[-1])
    q = torch.randn(sum(n for n, _ in CHUNKS), num_heads, head_dim, generator=gen)
    return q, key_cache, value_cache, block_tables, slots


def _reference(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slots: list[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """float64 causal softmax attention over the decoded rows the cache holds -> [T, Hq, D]."""
    from ember.models.kv_cache_format import format_of_cache

    kv_format = format_of_cache(key_cache)
    head_dim = q.shape[2]
    flat_keys = key_cache.flatten(0, 1)
    flat_values = value_cache.flatten(0, 1)
    outputs = []
    start = 0
    for (query_len, context), seq_slots in zip(CHUNKS, slots, strict=True):
        keys = kv_format.decode(flat_keys[seq_slots], head_dim, torch.float64)  # [C, Hkv, D]
        values = kv_format.decode(flat_values[seq_slots], head_dim, torch.float64)
        group = q.shape[1] // keys.shape[1]
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, C, D]
        values = values.repeat_interleave(group, dim=1).transpose(0, 1)
        queries = q[start : start + query_len].double().transpose(0, 1)  # [Hq, Q, D]
        scores = queries @ keys.transpose(1, 2) * scale  # [Hq, Q, C]
        positions = torch.arange(context - query_len, context)
        scores.masked_fill_(torch.arange(context)[None, :] > positions[:, None], float("-inf"))
        outputs.append((torch.softmax(scores, dim=-1) @ values).transpose(0, 1))  # [Q, Hq, D]
        start += query_len
    return torch.cat(outputs)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_format", FORMATS, ids=lambda f: f.name)
def test_matches_float64_softmax_over_the_cached_rows(isa: str, kv_format: KVCacheFormat) -> None:
    kernel = NativePrefillAttention(isa)
    for seed, (num_heads, num_kv_heads, head_dim, block_size) in enumerate(SHAPES):
        q, key_cache, value_cache, block_tables, slots = _batch(
            kv_format, num_heads, num_kv_heads, head_dim, block_size, seed
        )
        scale = 1 / math.sqrt(head_dim)
        out = torch.full_like(q, float("nan"))
        starts = [0, *torch.tensor([n for n, _ in CHUNKS]).cumsum(0)[:-1].tolist()]
        kernel.attend(
            q,
            key_cache,
            value_cache,
            block_tables,
            starts,
            [n for n, _ in CHUNKS],
            [c for _, c in CHUNKS],
            scale,
            out,
        )
        expected = _reference(q, key_cache, value_cache, slots, scale)
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
def test_backend_mixed_batch_matches_the_torch_reference(isa: str) -> None:
    """Decodes, a 3-token verification chunk and two prefill chunks in one step: the backend with the kernel
    writes the same cache and returns the same rows as the torch reference (fp32 cache, so a first chunk's fresh
    keys are exactly its cached ones)."""
    gen = torch.Generator().manual_seed(11)
    num_heads, num_kv_heads, head_dim, block_size = 9, 3, 64, 16
    query_lens, context_lens = [1, 3, 100, 1, 61], [40, 70, 100, 9, 300]
    num_blocks = 64
    caches = [torch.zeros(num_blocks, block_size, num_kv_heads, head_dim) for _ in range(2)]
    block_tables = torch.zeros(len(query_lens), 20, dtype=torch.int64)
    new_slots = []
    next_block = 1
    for seq, (query_len, context) in enumerate(zip(query_lens, context_lens, strict=True)):
        count = math.ceil(context / block_size)
        block_tables[seq, :count] = torch.arange(next_block, next_block + count)
        next_block += count
        slots = (
            block_tables[seq, torch.arange(context) // block_size] * block_size
            + torch.arange(context) % block_size
        )
        cached = context - query_len
        write_kv_cache(
            caches[0],
            caches[1],
            torch.randn(cached, num_kv_heads, head_dim, generator=gen),
            torch.randn(cached, num_kv_heads, head_dim, generator=gen),
            slots[:cached],
        )
        new_slots.append(slots[cached:])
    tokens = sum(query_lens)
    q = torch.randn(tokens, num_heads, head_dim, generator=gen)
    k = torch.randn(tokens, num_kv_heads, head_dim, generator=gen)
    v = torch.randn(tokens, num_kv_heads, head_dim, generator=gen)
    starts = torch.zeros(len(query_lens) + 1, dtype=torch.int64)
    starts[1:] = torch.tensor(query_lens).cumsum(0)
    attn = AttentionMetadata(
        query_lens,
        context_lens,
        starts,
        torch.tensor(context_lens),
        block_tables,
        torch.cat(new_slots),
        block_size,
    )
    reference_caches = (caches[0].clone(), caches[1].clone())
    expected = TorchAttentionBackend(native_prefill=None).forward(q, k, v, attn, reference_caches, 0.125)
    native_caches = (caches[0].clone(), caches[1].clone())
    out = TorchAttentionBackend(native_prefill=NativePrefillAttention(isa)).forward(
        q, k, v, attn, native_caches, 0.125
    )
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(native_caches, reference_caches, atol=0, rtol=0)


def test_a_block_id_outside_the_cache_is_refused() -> None:
    q, key_cache, value_cache, block_tables, _ = _batch(FP16, 9, 3, 64, 16, seed=5)
    block_tables[1, 3] = key_cache.shape[0]
    with pytest.raises(ValueError, match="block id is outside the cache"):
        NativePrefillAttention(ISAS[0]).attend(
            q,
            key_cache,
            value_cache,
            block_tables,
            [0, 77, 127, 257],
            [77, 50, 130, 2],
            [77, 250, 135, 19],
            0.1,
            torch.empty_like(q),
        )
