"""One step's scheduled sequences flattened into the tensors a forward takes: token ids, positions, the paged
attention metadata, which rows to sample, and which rows run which LoRA adapter."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.engine.scheduler_output import ScheduledSequence
from ember.lora.adapter import LoraAdapter
from ember.lora.layers import LoraContext
from ember.models.attention_metadata import AttentionMetadata


@dataclass
class BatchInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn: AttentionMetadata
    sample_rows: list[int]  # index into the flattened batch of each sampling sequence's last token
    prompt_logprob_spans: dict[
        str, tuple[int, int]
    ]  # sequence id -> (first row, num rows) for prompt logprobs
    pool_spans: dict[
        str, tuple[int, int]
    ]  # sequence id -> (first row, num rows) of an embedding input's chunk
    lora: LoraContext | None = None  # which rows run which adapter; None when every row is the base model


def build_batch_inputs(
    scheduled: list[ScheduledSequence],
    adapters: list[LoraAdapter | None],
    block_size: int,
    device: torch.device,
) -> BatchInputs:
    """adapters: each scheduled sequence's adapter (None: the base model), in the same order."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    context_lens: list[int] = []
    sample_rows: list[int] = []
    spans: dict[str, tuple[int, int]] = {}
    pool_spans: dict[str, tuple[int, int]] = {}
    bs = block_size
    for item in scheduled:
        n = item.num_tokens
        start = len(ids)
        ids.extend(item.token_ids)
        ids.extend(
            item.draft_token_ids
        )  # verified in this forward: rows start + n - 1 - len(draft) .. start + n - 1
        pos = range(item.start_position, item.start_position + n)
        positions.extend(pos)
        table = item.block_ids
        slots.extend(table[p // bs] * bs + p % bs for p in pos)
        query_lens.append(n)
        context_lens.append(item.start_position + n)
        if item.sample:
            sample_rows.append(start + n - 1)
        if item.needs_prompt_logprobs:
            spans[item.sequence_id] = (start, n)
        if item.pool:
            pool_spans[item.sequence_id] = (start, n)
    max_blocks = max(len(item.block_ids) for item in scheduled)
    # One tensor from padded lists: a tensor per row costs ~8 us each, a visible share of a 32-stream step.
    table = torch.tensor(
        [list(item.block_ids) + [0] * (max_blocks - len(item.block_ids)) for item in scheduled],
        dtype=torch.int64,
    )  # [S, max_blocks]
    qlens = torch.tensor(query_lens, dtype=torch.int64)
    start_loc = torch.zeros(len(scheduled) + 1, dtype=torch.int64)
    start_loc[1:] = torch.cumsum(qlens, 0)
    attn = AttentionMetadata(
        query_lens=query_lens,
        context_lens=context_lens,
        query_start_loc=start_loc.to(device),
        context_lens_tensor=torch.tensor(context_lens, dtype=torch.int64, device=device),
        block_tables=table.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_size=bs,
    )
    # Base rows and rows of several adapters share one forward; each adapter touches only its rows.
    lora = None
    if any(adapter is not None for adapter in adapters):
        lora = LoraContext.for_batch(
            [(adapter, item.num_tokens) for adapter, item in zip(adapters, scheduled, strict=True)]
        )
    return BatchInputs(
        input_ids=torch.tensor(ids, dtype=torch.int64, device=device),
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        attn=attn,
        sample_rows=sample_rows,
        prompt_logprob_spans=spans,
        pool_spans=pool_spans,
        lora=lora,
    )
