"""Mixed batches through a real paged KV cache: chunked prefills and decodes of different sequences in one
forward, blocks scattered over the cache; every token's logits must equal running its sequence alone."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from ember.models.attention import TorchAttentionBackend
from ember.models.attention_metadata import AttentionMetadata
from ember.models.kv_cache import allocate_kv_caches, kv_bytes_per_block

BLOCK_SIZE = 4
NUM_BLOCKS = 48
TinyModel = Any  # conftest.TinyModel: (hf, config, ours)

# Full token counts per sequence (prompt + teacher-forced continuation) and the schedule: per step, the
# (sequence, new tokens) pairs in batch order. It mixes whole prefills, chunks that follow cached context,
# decodes next to prefill chunks, decode-only steps, and a step over a subset in a different order.
SEQ_LENS = [11, 17, 6, 24]
SCHEDULE = [
    [(0, 7), (1, 5), (2, 3)],
    [(0, 1), (1, 8), (2, 1), (3, 6)],
    [(3, 14), (0, 1), (1, 1), (2, 1)],
    [(0, 1), (1, 1), (2, 1), (3, 1)],
    [(3, 1), (1, 1), (0, 1)],
    [(1, 1), (3, 2)],
]


def assign_blocks(seq_lens: list[int], seed: int) -> list[list[int]]:
    """Non-contiguous, shuffled physical blocks per sequence; block 0 is among them (it is also the padding id)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(NUM_BLOCKS, generator=generator).tolist()
    order.remove(0)
    order.insert(3, 0)
    tables, next_free = [], 0
    for n in seq_lens:
        count = math.ceil(n / BLOCK_SIZE)
        tables.append(order[next_free : next_free + count])
        next_free += count
    return tables


def paged_metadata(
    step: list[tuple[int, int]], done: list[int], tables: list[list[int]]
) -> AttentionMetadata:
    """What the engine's model runner would build for one step, given tokens already cached per sequence."""
    query_lens = [n for _, n in step]
    context_lens = [done[seq] + n for seq, n in step]
    max_blocks = max(len(tables[seq]) for seq, _ in step)
    block_tables = torch.zeros(len(step), max_blocks, dtype=torch.int64)
    slots = []
    for row, (seq, n) in enumerate(step):
        block_tables[row, : len(tables[seq])] = torch.tensor(tables[seq])
        for pos in range(done[seq], done[seq] + n):
            slots.append(tables[seq][pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE)
    start = torch.zeros(len(step) + 1, dtype=torch.int64)
    start[1:] = torch.cumsum(torch.tensor(query_lens), 0)
    return AttentionMetadata(
        query_lens=query_lens,
        context_lens=context_lens,
        query_start_loc=start,
        context_lens_tensor=torch.tensor(context_lens, dtype=torch.int64),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        block_size=BLOCK_SIZE,
    )


@pytest.mark.parametrize("variant", ["llama", "qwen2", "qwen3"])
def test_mixed_paged_steps_match_each_sequence_alone(
    tiny_model: Callable[[str], TinyModel], variant: str
) -> None:
    tiny = tiny_model(variant)
    model, config = tiny.ours, tiny.config
    generator = torch.Generator().manual_seed(11)
    sequences = [torch.randint(0, config.vocab_size, (n,), generator=generator) for n in SEQ_LENS]
    with torch.no_grad():
        alone = [
            model.compute_logits(
                model(s, torch.arange(len(s)), AttentionMetadata.for_prefill_without_cache([len(s)]))
            )
            for s in sequences
        ]
    for seq, logits in zip(sequences, alone, strict=True):
        torch.testing.assert_close(logits, tiny.hf_logits(seq.tolist()), rtol=1e-4, atol=1e-5)

    tables = assign_blocks(SEQ_LENS, seed=3)
    kv_caches = allocate_kv_caches(config, NUM_BLOCKS, BLOCK_SIZE, torch.float32, "cpu")
    done = [0] * len(SEQ_LENS)
    saw_decode_only = saw_mixed = False
    for step in SCHEDULE:
        attn = paged_metadata(step, done, tables)
        saw_decode_only |= attn.is_decode_only
        saw_mixed |= not attn.is_decode_only and min(attn.query_lens) == 1
        ids = torch.cat([sequences[seq][done[seq] : done[seq] + n] for seq, n in step])
        positions = torch.cat([torch.arange(done[seq], done[seq] + n) for seq, n in step])
        with torch.no_grad():
            logits = model.compute_logits(model(ids, positions, attn, kv_caches))
        expected = torch.cat([alone[seq][done[seq] : done[seq] + n] for seq, n in step])
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
        for seq, n in step:
            done[seq] += n
    assert done == SEQ_LENS
    assert saw_decode_only and saw_mixed

    used = {b for table in tables for b in table}
    unused = sorted(set(range(NUM_BLOCKS)) - used)
    for keys, values in kv_caches:
        assert keys[unused].abs().sum() == 0 and values[unused].abs().sum() == 0  # no write went astray
        assert keys[sorted(used)].abs().sum() > 0


@pytest.mark.parametrize("gather_slots", [None, 1, 12])
def test_decode_batch_ignores_padding_past_each_context(gather_slots: int | None) -> None:
    """Garbage in slots past a sequence's context (stale blocks, padding block 0) must not leak in; the result
    is the same whether decodes are gathered all at once, one by one, or two at a time (12 slots)."""
    torch.manual_seed(0)
    num_heads, num_kv_heads, head_dim = 4, 2, 8
    key_cache = torch.randn(7, BLOCK_SIZE, num_kv_heads, head_dim)
    value_cache = torch.randn(7, BLOCK_SIZE, num_kv_heads, head_dim)
    q = torch.randn(3, num_heads, head_dim)
    k, v = torch.randn(3, num_kv_heads, head_dim), torch.randn(3, num_kv_heads, head_dim)
    tables = [[3, 5], [2, 0], [6, 1]]  # sequence 1 has one real block; its row is padded with block 0
    context_lens = [6, 3, 5]
    attn = AttentionMetadata(
        query_lens=[1, 1, 1],
        context_lens=context_lens,
        query_start_loc=torch.tensor([0, 1, 2, 3]),
        context_lens_tensor=torch.tensor(context_lens),
        block_tables=torch.tensor(tables),
        slot_mapping=torch.tensor([5 * BLOCK_SIZE + 1, 2 * BLOCK_SIZE + 2, 1 * BLOCK_SIZE + 0]),
        block_size=BLOCK_SIZE,
    )
    scale = head_dim**-0.5
    slot_bytes = num_kv_heads * head_dim * 4
    backend = (
        TorchAttentionBackend() if gather_slots is None else TorchAttentionBackend(gather_slots * slot_bytes)
    )
    out = backend.forward(q, k, v, attn, (key_cache, value_cache), scale)
    for i, (table, n) in enumerate(zip(tables, context_lens, strict=True)):
        keys = key_cache[table].flatten(0, 1)[:n].repeat_interleave(2, dim=1)  # [n, Hq, D]
        values = value_cache[table].flatten(0, 1)[:n].repeat_interleave(2, dim=1)
        probs = torch.softmax(torch.einsum("hd,nhd->hn", q[i], keys) * scale, dim=-1)  # [Hq, n]
        torch.testing.assert_close(out[i], torch.einsum("hn,nhd->hd", probs, values))
    torch.testing.assert_close(key_cache[5, 1], k[0])
    torch.testing.assert_close(value_cache[2, 2], v[1])


def test_metadata_must_cover_the_batch(tiny_model: Callable[[str], TinyModel]) -> None:
    model = tiny_model("llama").ours
    attn = AttentionMetadata.for_prefill_without_cache([3])
    with pytest.raises(ValueError, match="covers 3 tokens but the batch has 2"):
        model(torch.tensor([1, 2]), torch.tensor([0, 1]), attn, None)
    with pytest.raises(ValueError, match="needs block_tables and slot_mapping"):
        caches = allocate_kv_caches(model.config, 2, BLOCK_SIZE, torch.float32, "cpu")
        model(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]), attn, caches)
    with pytest.raises(ValueError, match="blocks of 8 slots but the metadata says 4"):
        paged = paged_metadata([(0, 3)], [0], [[1]])
        wrong_block_size = allocate_kv_caches(model.config, 2, 2 * BLOCK_SIZE, torch.float32, "cpu")
        model(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]), paged, wrong_block_size)
    with pytest.raises(ValueError, match="got 1 KV caches for 2 layers"):
        model(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]), attn, caches[:1])


def test_kv_cache_layout_and_size(tiny_model: Callable[[str], TinyModel]) -> None:
    config = tiny_model("qwen3").config
    caches = allocate_kv_caches(config, 5, 16, torch.bfloat16, "cpu")
    assert len(caches) == config.num_layers
    for keys, values in caches:
        assert keys.shape == values.shape == (5, 16, config.num_kv_heads, config.head_dim)
        assert keys.dtype == torch.bfloat16
    total = sum(k.nbytes + v.nbytes for k, v in caches)
    assert kv_bytes_per_block(config, 16, torch.bfloat16) * 5 == total
    with pytest.raises(ValueError, match="num_blocks must be positive"):
        allocate_kv_caches(config, 0, 16, torch.float32, "cpu")
