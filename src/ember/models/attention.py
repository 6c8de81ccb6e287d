"""Attention over a flattened batch with a paged KV cache: the backend interface and the torch reference.

A backend receives the new tokens' q/k/v after rope, stores k/v in the cache slots the engine assigned, and
attends each new token causally over its sequence's whole context. Other backends (a fused C++ kernel, flash
attention on GPU) implement the same `forward`. The cache may hold compact rows (fp16, bf16, q8_0: see
kv_cache_format.py); they are encoded on write and decoded to the queries' dtype as they are gathered.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from itertools import accumulate

import torch
import torch.nn.functional as F

from ember.kernels.prefill_attention import NativePrefillAttention
from ember.models.attention_metadata import AttentionMetadata
from ember.models.kv_cache_format import format_of_cache

# Chunks over cached context up to this many tokens attend as one decode per token (speculative verification).
_MAX_QUERY_AS_DECODES = 16


class AttentionBackend(ABC):
    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None,
        scale: float,
    ) -> torch.Tensor:
        """q [T, Hq, D], k and v [T, Hkv, D] for the T new tokens -> attention output [T, Hq, D]."""


class TorchAttentionBackend(AttentionBackend):
    """Reference backend in plain torch: decodes batched into masked matmuls, prefill chunks one by one
    through scaled_dot_product_attention. GQA shares each key head across its query group by reshaping.

    `decode_gather_bytes` bounds the keys gathered at once for a group of decodes (as much again for values):
    small enough that the gathered copy is still in cache when the matmuls read it and does not cost fresh
    page faults per call (measured 2-4x faster for 32 sequences of 512 tokens than one gather for all).

    `native_prefill`: the native tiled kernel that attends prefill chunks straight from the paged cache (default:
    the one this CPU runs, when the extension is built); None keeps every chunk on torch, the reference.
    """

    def __init__(
        self,
        decode_gather_bytes: int = 4 << 20,
        native_prefill: NativePrefillAttention | None | str = "auto",
    ):
        if decode_gather_bytes <= 0:
            raise ValueError(f"decode_gather_bytes must be positive, got {decode_gather_bytes}")
        self.decode_gather_bytes = decode_gather_bytes
        if native_prefill == "auto":
            native_prefill = NativePrefillAttention.when_available()
        elif isinstance(native_prefill, str):
            raise ValueError(
                f"native_prefill must be 'auto', None or a NativePrefillAttention, got {native_prefill!r}"
            )
        self.native_prefill: NativePrefillAttention | None = native_prefill

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None,
        scale: float,
    ) -> torch.Tensor:
        num_tokens = q.shape[0]
        if sum(attn.query_lens) != num_tokens:
            raise ValueError(
                f"attention metadata covers {sum(attn.query_lens)} tokens but the batch has {num_tokens}"
            )
        if kv_cache is None:
            return _attend_without_cache(q, k, v, attn, scale)
        if attn.block_tables is None or attn.slot_mapping is None:
            raise ValueError("attention with a KV cache needs block_tables and slot_mapping in the metadata")
        key_cache, value_cache = kv_cache
        if key_cache.shape[3] != format_of_cache(key_cache).row_width(q.shape[2]):
            raise ValueError(
                f"the KV cache's rows are {key_cache.shape[3]} wide, not those of head_dim {q.shape[2]}"
            )
        if key_cache.shape[1] != attn.block_size:
            raise ValueError(
                f"the KV cache has blocks of {key_cache.shape[1]} slots but the metadata says {attn.block_size}"
            )
        write_kv_cache(key_cache, value_cache, k, v, attn.slot_mapping)
        native = self.native_prefill
        if native is not None and not native.serves(q, key_cache):
            native = None
        return _attend_with_cache(
            q, k, v, attn, key_cache, value_cache, scale, self.decode_gather_bytes, native
        )


def write_kv_cache(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store k, v [T, Hkv, D] at their slots of the caches [num_blocks, block_size, Hkv, W], encoded as the
    caches' format stores a row (W = D, or D + 4 for q8_0)."""
    if slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} slots for {k.shape[0]} tokens")
    kv_format = format_of_cache(key_cache)
    num_slots = key_cache.shape[0] * key_cache.shape[1]
    key_cache.view(num_slots, *key_cache.shape[2:])[slot_mapping] = kv_format.encode(k)
    value_cache.view(num_slots, *value_cache.shape[2:])[slot_mapping] = kv_format.encode(v)


def _attend_without_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Causal attention inside each sequence; built from torch.cat so autograd flows (training).

    Each sequence goes in as a batch of one, [1, H, T, D]: on 4-D inputs torch's CPU SDPA takes its
    flash-attention kernel (backward included), while 3-D ones take the math path, which materializes the
    [H, T, T] fp32 scores and their softmax (~220 MB each for a 2.5k-token row of SmolLM2)."""
    if attn.context_lens != attn.query_lens:
        raise ValueError("without a KV cache every sequence's context_len must equal its query_len")
    outputs = []
    for start, end in _spans(attn.query_lens):
        out = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1).unsqueeze(0),  # [1, Hq, T, D]
            k[start:end].transpose(0, 1).unsqueeze(0),  # [1, Hkv, T, D]
            v[start:end].transpose(0, 1).unsqueeze(0),
            is_causal=True,
            scale=scale,
            enable_gqa=True,
        )  # [1, Hq, T, D]
        outputs.append(out.squeeze(0).transpose(0, 1))  # [T, Hq, D]
    return torch.cat(outputs) if outputs else torch.empty_like(q)


def _attend_with_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn: AttentionMetadata,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    scale: float,
    gather_bytes: int,
    native_prefill: NativePrefillAttention | None,
) -> torch.Tensor:
    assert attn.block_tables is not None
    if attn.is_decode_only:
        return _decode_batched(
            q, key_cache, value_cache, attn.block_tables, attn.context_lens, scale, gather_bytes
        )

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [T, Hq, D], contiguous for the kernel
    spans = _spans(attn.query_lens)
    # Decodes are batched; a short chunk over cached context (a speculative verification's k + 1 tokens) gathers
    # its context once and takes one masked GEMM per KV head for all its queries, instead of scaled_dot_product
    # with GQA and a boolean mask (measured ~20x slower for 9 queries over 300 cached tokens).
    decode_rows: list[int] = []
    decode_seqs: list[int] = []
    decode_context_lens: list[int] = []
    short: set[int] = set()
    for seq, (start, end) in enumerate(spans):
        query_len, context_len = end - start, attn.context_lens[seq]
        if query_len == 1:
            decode_rows.append(start)
            decode_seqs.append(seq)
            decode_context_lens.append(context_len)
        elif query_len <= _MAX_QUERY_AS_DECODES and context_len > query_len:
            short.add(seq)
            out[start:end] = _short_chunk(
                q[start:end], key_cache, value_cache, attn.block_tables[seq], context_len, scale
            )
    if decode_rows:
        rows = torch.tensor(decode_rows, dtype=torch.int64, device=q.device)  # [R]
        seq_index = torch.tensor(decode_seqs, dtype=torch.int64, device=q.device)  # [R]
        out[rows] = _decode_batched(
            q[rows],
            key_cache,
            value_cache,
            attn.block_tables[seq_index],
            decode_context_lens,
            scale,
            gather_bytes,
        )
    chunks = [seq for seq, (start, end) in enumerate(spans) if end - start > 1 and seq not in short]
    if native_prefill is not None and chunks:
        # Every prefill chunk of the batch in one call, its keys and values read from the cache just written.
        native_prefill.attend(
            q,
            key_cache,
            value_cache,
            attn.block_tables[chunks],
            [spans[seq][0] for seq in chunks],
            [attn.query_lens[seq] for seq in chunks],
            [attn.context_lens[seq] for seq in chunks],
            scale,
            out,
        )
        return out
    for seq in chunks:
        start, end = spans[seq]
        query_len = end - start
        context_len = attn.context_lens[seq]
        if context_len == query_len:
            # Nothing cached before this chunk: the fresh k/v are the whole context.
            out[start:end] = _causal_sdpa(q[start:end], k[start:end], v[start:end], scale)
            continue
        keys, values = _gather_context(
            key_cache, value_cache, attn.block_tables[seq], context_len, q.shape[2], q.dtype
        )
        first_position = context_len - query_len
        query_positions = torch.arange(first_position, context_len, device=q.device)  # [Q]
        key_positions = torch.arange(context_len, device=q.device)  # [C]
        visible = key_positions[None, :] <= query_positions[:, None]  # [Q, C]
        out[start:end] = _sdpa(q[start:end], keys, values, scale, mask=visible)
    return out


def _short_chunk(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    context_len: int,
    scale: float,
) -> torch.Tensor:
    """q [Q, Hq, D], the last Q tokens of a sequence of context_len, each over its own prefix -> [Q, Hq, D]."""
    num_queries, num_heads, head_dim = q.shape
    keys, values = _gather_context(
        key_cache, value_cache, block_table, context_len, head_dim, q.dtype
    )  # [C, Hkv, D] each
    num_kv_heads = keys.shape[1]
    group = num_heads // num_kv_heads
    grouped_q = q.reshape(num_queries, num_kv_heads, group, head_dim).permute(1, 0, 2, 3)  # [Hkv, Q, G, D]
    grouped_q = grouped_q.reshape(num_kv_heads, num_queries * group, head_dim)  # [Hkv, Q*G, D]
    # heads-first copies: a GEMM over strided [C, Hkv, D] views was ~10x slower than the copy plus a plain one
    keys = keys.permute(1, 0, 2).contiguous()  # [Hkv, C, D]
    values = values.permute(1, 0, 2).contiguous()  # [Hkv, C, D]
    scores = torch.bmm(grouped_q.contiguous(), keys.transpose(1, 2)).mul_(scale)  # [Hkv, Q*G, C]
    first = context_len - num_queries
    hidden = (
        torch.arange(context_len, device=q.device)[None, :]
        > torch.arange(first, context_len, device=q.device)[:, None]
    )  # [Q, C]: keys after each query's own position
    scores.masked_fill_(hidden.repeat_interleave(group, dim=0)[None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [Hkv, Q*G, C]
    out = torch.bmm(probs, values)  # [Hkv, Q*G, D]
    return out.reshape(num_kv_heads, num_queries, group, head_dim).permute(1, 0, 2, 3).reshape(q.shape)


def _decode_batched(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: list[int],
    scale: float,
    gather_bytes: int,
) -> torch.Tensor:
    """One new token per sequence: q [S, Hq, D] against each sequence's cached context -> [S, Hq, D],
    in groups of sequences whose gathered keys take at most `gather_bytes` (at least one sequence)."""
    slot_bytes = key_cache.shape[2] * q.shape[2] * q.element_size()
    group = max(1, gather_bytes // (slot_bytes * max(context_lens)))
    if group >= len(context_lens):
        return _decode_group(q, key_cache, value_cache, block_tables, context_lens, scale)
    parts = [
        _decode_group(
            q[i : i + group],
            key_cache,
            value_cache,
            block_tables[i : i + group],
            context_lens[i : i + group],
            scale,
        )
        for i in range(0, len(context_lens), group)
    ]
    return torch.cat(parts)


def _decode_group(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: list[int],
    scale: float,
) -> torch.Tensor:
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = key_cache.shape[2]
    block_size = key_cache.shape[1]
    max_context = max(context_lens)
    num_blocks = math.ceil(max_context / block_size)
    # One index_select over a flat block list (several times faster than indexing with a 2-D table), then
    # per KV head a batched GEMM over strided [S, L, D] views: transposing the gathered keys to heads-first
    # would copy them a second time, and that copy costs more than the attention arithmetic.
    blocks = block_tables[:, :num_blocks].reshape(-1)  # [S * nb]
    keys = _per_sequence(key_cache.index_select(0, blocks), num_seqs, max_context, head_dim, q.dtype)
    values = _per_sequence(
        value_cache.index_select(0, blocks), num_seqs, max_context, head_dim, q.dtype
    )  # [S, L, Hkv, D] each
    grouped_q = q.reshape(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)  # [S, Hkv, G, D]
    scores = torch.stack(
        [torch.bmm(grouped_q[:, h], keys[:, :, h].transpose(1, 2)) for h in range(num_kv_heads)], dim=1
    )  # [S, Hkv, G, L]
    padding = (
        torch.arange(max_context, device=q.device)[None, :]
        >= torch.tensor(context_lens, dtype=torch.int64, device=q.device)[:, None]
    )  # [S, L]
    scores = scores.mul_(scale).masked_fill_(padding[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [S, Hkv, G, L]
    out = torch.stack(
        [torch.bmm(probs[:, h], values[:, :, h]) for h in range(num_kv_heads)], dim=1
    )  # [S, Hkv, G, D]
    return out.reshape(num_seqs, num_heads, head_dim)


def _per_sequence(
    blocks: torch.Tensor, num_seqs: int, length: int, head_dim: int, dtype: torch.dtype
) -> torch.Tensor:
    """Gathered blocks [S * nb, block_size, Hkv, W] -> the first `length` slots of each sequence decoded,
    [S, L, Hkv, D]."""
    rows = blocks.view(num_seqs, -1, *blocks.shape[2:])[:, :length]
    return format_of_cache(blocks).decode(rows, head_dim, dtype)


def _gather_context(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    context_len: int,
    head_dim: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first context_len cached keys and values of one sequence, decoded to `dtype`, each [C, Hkv, D]."""
    kv_format = format_of_cache(key_cache)
    blocks = block_table[: math.ceil(context_len / key_cache.shape[1])]  # [nb]
    keys = key_cache.index_select(0, blocks).flatten(0, 1)[:context_len]
    values = value_cache.index_select(0, blocks).flatten(0, 1)[:context_len]
    return kv_format.decode(keys, head_dim, dtype), kv_format.decode(values, head_dim, dtype)


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return _sdpa(q, k, v, scale, mask=None)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """q [Q, Hq, D] over k, v [C, Hkv, D]; causal from the top-left corner when mask is None -> [Q, Hq, D]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1),  # [Hq, Q, D]
        k.transpose(0, 1),  # [Hkv, C, D]
        v.transpose(0, 1),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=True,
    )  # [Hq, Q, D]
    return out.transpose(0, 1)


def _spans(query_lens: list[int]) -> list[tuple[int, int]]:
    ends = list(accumulate(query_lens))
    return [(end - length, end) for end, length in zip(ends, query_lens, strict=True)]
