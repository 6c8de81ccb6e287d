"""When the batched forward of a step raises, find the sequences it must fail: each scheduled sequence runs
again alone, so one request's fault (a bad adapter, a kernel fault on its shapes) fails that request, not the
whole batch. Used only after a failure: a healthy step pays nothing.

Running a sequence's chunk again is safe: it writes the same keys and values into the same slots, over whatever
the failed batch left there. A survivor that reads a block another failed sequence was writing in this step
(a prefix it took from the cache in this same step) fails too: that KV may be incomplete."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ember.engine.scheduler_output import ScheduledSequence


def blocks_written(item: ScheduledSequence, block_size: int) -> set[int]:
    """The KV blocks the chunk writes: those holding positions start_position .. start_position + len - 1."""
    first = item.start_position // block_size
    last = (item.start_position + item.num_tokens - 1) // block_size
    return set(item.block_ids[first : last + 1])


def forward_each_alone(
    scheduled: list[ScheduledSequence],
    forward_one: Callable[[ScheduledSequence], torch.Tensor],
    block_size: int,
) -> tuple[list[ScheduledSequence], list[torch.Tensor], dict[str, str]]:
    """forward_one(item) -> hidden [N, H] of that chunk alone. Returns the survivors in their order, each one's
    hidden rows, and the failed sequences with the reason."""
    errors: dict[str, str] = {}
    results: list[tuple[ScheduledSequence, torch.Tensor]] = []
    for item in scheduled:
        try:
            results.append((item, forward_one(item)))
        except Exception as exc:  # noqa: BLE001 - this sequence's fault, reported on it alone
            errors[item.sequence_id] = f"the forward pass failed for this request: {exc}"
    failed_writes: set[int] = set()
    for item in scheduled:
        if item.sequence_id in errors:
            failed_writes |= blocks_written(item, block_size)
    survivors: list[ScheduledSequence] = []
    hiddens: list[torch.Tensor] = []
    for item, hidden in results:
        if failed_writes & set(item.block_ids):
            errors[item.sequence_id] = "a request sharing its cached prompt blocks failed in the same step"
            continue
        survivors.append(item)
        hiddens.append(hidden)
    return survivors, hiddens, errors
