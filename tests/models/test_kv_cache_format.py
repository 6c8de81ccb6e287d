"""KV cache formats (fp32, fp16, bf16, q8_0): what a stored row keeps, how many tokens a GiB holds, what `auto`
picks, and the torch reference attention over a compact cache against the same attention over an fp32 cache
holding exactly the values the compact one stores (decodes, a verification run, a prefill chunk over context)."""

from __future__ import annotations

import pytest
import torch

from ember.engine.engine_config import CacheConfig
from ember.engine.testing import tiny_config
from ember.models.attention import TorchAttentionBackend
from ember.models.attention_metadata import AttentionMetadata
from ember.models.kv_cache import allocate_kv_caches, kv_bytes_per_block
from ember.models.kv_cache_format import (
    BF16,
    FP16,
    FP32,
    Q8_0,
    KVCacheFormat,
    kv_cache_format,
    resolve_kv_cache_dtype,
)

COMPACT = (FP16, BF16, Q8_0)


@pytest.mark.parametrize("kv_format", COMPACT, ids=lambda f: f.name)
def test_a_stored_row_keeps_the_values_to_the_formats_precision(kv_format: KVCacheFormat) -> None:
    x = torch.randn(50, 3, 64, generator=torch.Generator().manual_seed(1)) * 3  # [T, Hkv, D]
    back = kv_format.decode(kv_format.encode(x), 64, torch.float32)
    error = (back - x).abs()
    if kv_format is Q8_0:
        # half an int8 step of the row's own scale
        bound = x.abs().amax(dim=-1, keepdim=True) / 127 / 2 * (1 + 1e-5)
        assert bool((error <= bound).all())
    else:
        relative = 2**-11 if kv_format is FP16 else 2**-8
        assert bool((error <= x.abs() * relative + 1e-7).all())


def test_q8_0_keeps_a_row_of_zeros_and_its_scale_bytes() -> None:
    rows = Q8_0.encode(torch.zeros(2, 64))
    assert rows.shape == (2, 68) and rows.dtype == torch.int8
    assert bool((Q8_0.decode(rows, 64, torch.float32) == 0).all())
    x = torch.tensor([[1.0, -2.0, 0.5, 127.0] * 16])
    assert float(Q8_0.decode(Q8_0.encode(x), 64, torch.float32)[0, 3]) == 127.0


def test_a_gib_holds_more_tokens_with_a_compact_format() -> None:
    config = tiny_config(num_heads=6, num_kv_heads=3, head_dim=64)
    fp32 = kv_bytes_per_block(config, 16, FP32)
    assert kv_bytes_per_block(config, 16, torch.float32) == fp32
    assert kv_bytes_per_block(config, 16, FP16) * 2 == fp32 == kv_bytes_per_block(config, 16, BF16) * 2
    assert kv_bytes_per_block(config, 16, Q8_0) == fp32 * 68 // 256  # 3.76x the tokens
    caches = allocate_kv_caches(config, 3, 16, Q8_0, "cpu")
    assert caches[0][0].shape == (3, 16, 3, 68) and caches[0][0].dtype == torch.int8
    assert sum(k.nbytes + v.nbytes for k, v in caches) == 3 * kv_bytes_per_block(config, 16, Q8_0)


def test_auto_is_fp16_only_where_the_fused_step_reads_it() -> None:
    assert resolve_kv_cache_dtype("auto", torch.float32, fused_decode=True) is FP16
    assert resolve_kv_cache_dtype("auto", torch.float32, fused_decode=False) is FP32
    assert resolve_kv_cache_dtype("auto", torch.bfloat16, fused_decode=True) is BF16
    assert resolve_kv_cache_dtype("q8_0", torch.float32, fused_decode=False) is Q8_0
    with pytest.raises(ValueError, match="int4"):
        kv_cache_format("int4")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        CacheConfig(kv_cache_dtype="fp8")


def _metadata(query_lens: list[int], context_lens: list[int], tables: torch.Tensor) -> AttentionMetadata:
    slots = []
    for seq, (q, c) in enumerate(zip(query_lens, context_lens, strict=True)):
        slots += [int(tables[seq, p // 16]) * 16 + p % 16 for p in range(c - q, c)]
    return AttentionMetadata(
        query_lens=query_lens,
        context_lens=context_lens,
        query_start_loc=torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()]),
        context_lens_tensor=torch.tensor(context_lens),
        block_tables=tables,
        slot_mapping=torch.tensor(slots),
        block_size=16,
    )


@pytest.mark.parametrize("kv_format", COMPACT, ids=lambda f: f.name)
def test_torch_attention_over_a_compact_cache(kv_format: KVCacheFormat) -> None:
    """Three decodes, a 5-token verification run and a 40-token prefill chunk, all over cached context."""
    gen = torch.Generator().manual_seed(7)
    heads, kv_heads, head_dim = 6, 2, 64
    query_lens, context_lens = [1, 1, 1, 5, 40], [1, 17, 50, 33, 75]
    tables = torch.randperm(40, generator=gen)[:25].reshape(5, 5)
    attn = _metadata(query_lens, context_lens, tables)
    tokens = sum(query_lens)
    q = torch.randn(tokens, heads, head_dim, generator=gen)
    k = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    v = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    context = torch.randn(2, 40, 16, kv_heads, head_dim, generator=gen)  # earlier tokens' keys and values
    compact = (kv_format.encode(context[0]), kv_format.encode(context[1]))
    # The fp32 oracle holds what the compact cache holds: its decoded rows, and the new k/v as stored.
    exact = tuple(kv_format.decode(c, head_dim, torch.float32) for c in compact)
    stored_k = kv_format.decode(kv_format.encode(k), head_dim, torch.float32)
    stored_v = kv_format.decode(kv_format.encode(v), head_dim, torch.float32)
    backend = TorchAttentionBackend()
    ours = backend.forward(q, k, v, attn, compact, scale=0.125)
    reference = backend.forward(q, stored_k, stored_v, attn, exact, scale=0.125)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    written = kv_format.decode(compact[0].flatten(0, 1)[attn.slot_mapping], head_dim, torch.float32)
    torch.testing.assert_close(written, stored_k)
