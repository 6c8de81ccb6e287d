"""A mixed batch cut in two for a split step: the sequences the fused step takes (decodes, verification runs,
short-context chunks) and the rest (prefill chunks over long contexts) for the module path. Each part is a batch of
its own (token rows, attention metadata, LoRA rows renumbered); `order` says which part runs first so that no part
reads a KV block the other writes in the same step before it is written."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.lora.layers import LoraContext
from ember.models.attention_metadata import AttentionMetadata


@dataclass(frozen=True)
class BatchPart:
    """Some of a batch's sequences, with their token rows numbered from 0 in batch order."""

    rows: torch.Tensor  # [t] int64: this part's rows in the whole batch
    input_ids: torch.Tensor  # [t]
    positions: torch.Tensor  # [t]
    attn: AttentionMetadata
    lora: LoraContext | None
    written_blocks: frozenset[int]  # KV blocks this part's new tokens are stored in
    read_blocks: frozenset[int]  # KV blocks this part's attention reads (its sequences' contexts)


def _part(
    sequences: list[int],
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    attn: AttentionMetadata,
    lora: LoraContext | None,
) -> BatchPart:
    assert attn.block_tables is not None and attn.slot_mapping is not None, "only paged batches are split"
    starts = attn.query_start_loc.tolist()
    rows_list = [row for s in sequences for row in range(starts[s], starts[s + 1])]
    rows = torch.tensor(rows_list, dtype=torch.int64)
    query_lens = [attn.query_lens[s] for s in sequences]
    context_lens = [attn.context_lens[s] for s in sequences]
    index = torch.tensor(sequences, dtype=torch.int64)
    start_loc = torch.zeros(len(sequences) + 1, dtype=torch.int64)
    start_loc[1:] = torch.cumsum(torch.tensor(query_lens, dtype=torch.int64), 0)
    slots = attn.slot_mapping[rows]  # [t]
    tables = attn.block_tables[index]  # [s, max_blocks]
    bs = attn.block_size
    read: set[int] = set()
    for table, context in zip(tables.tolist(), context_lens, strict=True):
        read.update(table[: -(-context // bs)])
    part_attn = AttentionMetadata(
        query_lens=query_lens,
        context_lens=context_lens,
        query_start_loc=start_loc.to(attn.query_start_loc.device),
        context_lens_tensor=attn.context_lens_tensor[index.to(attn.context_lens_tensor.device)],
        block_tables=tables,
        slot_mapping=slots,
        block_size=bs,
    )
    device_rows = rows.to(input_ids.device)
    return BatchPart(
        rows=device_rows,
        input_ids=input_ids[device_rows],
        positions=positions[device_rows],
        attn=part_attn,
        lora=None if lora is None else lora.select(rows_list, len(input_ids)),
        written_blocks=frozenset((slots // bs).tolist()),
        read_blocks=frozenset(read),
    )


def split_batch(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    attn: AttentionMetadata,
    lora: LoraContext | None,
    in_first: list[bool],
) -> tuple[BatchPart, BatchPart]:
    """(the sequences marked in `in_first`, the others), both non-empty, each in batch order."""
    first = [s for s, marked in enumerate(in_first) if marked]
    second = [s for s, marked in enumerate(in_first) if not marked]
    if not first or not second:
        raise ValueError("a split batch needs sequences on both sides")
    return (
        _part(first, input_ids, positions, attn, lora),
        _part(second, input_ids, positions, attn, lora),
    )


def order(one: BatchPart, other: BatchPart) -> tuple[BatchPart, BatchPart] | None:
    """The two parts in an order where neither reads a block the other writes later in the step; None when each
    reads what the other writes (one forward over the whole batch must run it: it writes every layer's keys and
    values before that layer attends). Sharing happens only through the prefix cache, when a block filled this
    step is found by a sequence admitted in the same step."""
    other_reads_one = not one.written_blocks.isdisjoint(other.read_blocks)
    one_reads_other = not other.written_blocks.isdisjoint(one.read_blocks)
    if other_reads_one and one_reads_other:
        return None
    return (other, one) if one_reads_other else (one, other)
