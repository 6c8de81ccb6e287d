"""What the engine tells the model about one flattened batch: which tokens belong to which sequence,
and where each sequence's keys and values live in the paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """A batch of S sequences whose T new tokens are flattened into one [T] tensor, sequence by sequence.

    Sequence i contributes `query_lens[i]` new tokens at positions `context_lens[i] - query_lens[i]` ..
    `context_lens[i] - 1`; its earlier tokens are already in the KV cache. A decode has query_len 1,
    a (chunk of a) prefill has query_len > 1. Without a KV cache (training, embeddings) every
    context_len equals its query_len and block_tables / slot_mapping are None.
    """

    query_lens: list[int]  # [S] new tokens per sequence in this step
    context_lens: list[int]  # [S] tokens of the sequence after this step (cached + new)
    query_start_loc: torch.Tensor  # [S + 1] int64 cumulative query_lens, starts at 0
    context_lens_tensor: torch.Tensor  # [S] int64, the same as context_lens
    block_tables: torch.Tensor | None  # [S, max_blocks] int64 physical block ids, padded with 0
    slot_mapping: torch.Tensor | None  # [T] int64 slot = block_id * block_size + offset for each new token
    block_size: int = 16

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def is_decode_only(self) -> bool:
        return all(q == 1 for q in self.query_lens)

    @staticmethod
    def for_prefill_without_cache(query_lens: list[int]) -> AttentionMetadata:
        """Causal attention within each sequence of the batch and nothing else (training, embeddings)."""
        lens = torch.tensor(query_lens, dtype=torch.int64)
        start = torch.zeros(len(query_lens) + 1, dtype=torch.int64)
        start[1:] = torch.cumsum(lens, 0)
        return AttentionMetadata(
            query_lens=list(query_lens),
            context_lens=list(query_lens),
            query_start_loc=start,
            context_lens_tensor=lens,
            block_tables=None,
            slot_mapping=None,
        )
