"""Per-row logit adjustments that come before temperature: biases, token masks and repetition penalties.

Every function works in place on a contiguous [N, V] logits tensor and touches only the rows it is given,
so a row's values never depend on which other requests share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def apply_logit_bias(logits: torch.Tensor, biases: list[tuple[int, dict[int, float]]]) -> None:
    """Add OpenAI logit_bias values; `biases` holds (row, {token_id: bias}) for the rows that have any."""
    vocab_size = logits.shape[1]
    rows: list[int] = []
    token_ids: list[int] = []
    values: list[float] = []
    for row, bias in biases:
        for token_id, value in bias.items():
            _check_token_id(token_id, vocab_size, "logit_bias")
            rows.append(row)
            token_ids.append(token_id)
            values.append(value)
    if not rows:
        return
    logits.index_put_(
        (torch.tensor(rows), torch.tensor(token_ids)),
        torch.tensor(values, dtype=logits.dtype),
        accumulate=True,
    )


def ban_tokens(logits: torch.Tensor, banned: list[tuple[int, list[int]]]) -> None:
    """Set the listed tokens of each (row, token_ids) pair to -inf (min_tokens keeps EOS and stop ids out)."""
    vocab_size = logits.shape[1]
    rows: list[int] = []
    token_ids: list[int] = []
    for row, ids in banned:
        for token_id in ids:
            _check_token_id(token_id, vocab_size, "stop/EOS token")
            rows.append(row)
            token_ids.append(token_id)
    if rows:
        logits[torch.tensor(rows), torch.tensor(token_ids)] = float("-inf")


def restrict_to_allowed(logits: torch.Tensor, allowed: list[tuple[int, torch.Tensor]]) -> None:
    """Keep only the tokens each row's [V] bool mask allows (structured output); the rest become -inf."""
    vocab_size = logits.shape[1]
    for row, mask in allowed:
        if mask.dtype != torch.bool or mask.shape != (vocab_size,):
            raise ValueError(
                f"allowed_token_ids_mask must be a bool tensor of shape ({vocab_size},), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        logits[row].masked_fill_(~mask, float("-inf"))


def apply_repetition_penalty(
    logits: torch.Tensor, rows: list[int], seen_token_ids: list[list[int]], penalties: list[float]
) -> None:
    """Divide positive and multiply negative logits of every token a row has seen (prompt + output)."""
    table = _distinct_tokens(rows, seen_token_ids, logits.shape[1])
    if table is None:
        return
    penalty = torch.tensor([penalties[k] for k in table.kept], dtype=logits.dtype).unsqueeze(1)  # [R, 1]
    flat = logits.view(-1)  # [N * V]; the caller's contiguous logits, updated in place
    x = flat[table.flat_index]  # [R, U]
    flat[table.flat_index] = torch.where(x > 0, x / penalty, x * penalty)


def apply_presence_frequency_penalties(
    logits: torch.Tensor,
    rows: list[int],
    output_token_ids: list[list[int]],
    presence: list[float],
    frequency: list[float],
) -> None:
    """OpenAI penalties over generated tokens only: logit -= presence * (count > 0) + frequency * count."""
    table = _distinct_tokens(rows, output_token_ids, logits.shape[1])
    if table is None:
        return
    presence_t = torch.tensor([presence[k] for k in table.kept], dtype=logits.dtype).unsqueeze(1)  # [R, 1]
    frequency_t = torch.tensor([frequency[k] for k in table.kept], dtype=logits.dtype).unsqueeze(1)  # [R, 1]
    counts = table.counts.to(logits.dtype)  # [R, U]
    flat = logits.view(-1)  # [N * V]
    flat[table.flat_index] = flat[table.flat_index] - (presence_t * (counts > 0) + frequency_t * counts)


@dataclass(frozen=True)
class _DistinctTokens:
    """The distinct token ids of some logits rows, as flat indices into the [N, V] logits."""

    kept: list[int]  # positions in the caller's lists of the rows that have any token
    flat_index: torch.Tensor  # [R, U] row * V + token id; short rows repeat their first entry
    counts: torch.Tensor  # [R, U] occurrences of each token (repeats carry the repeated entry's count)


def _distinct_tokens(
    rows: list[int], token_id_lists: list[list[int]], vocab_size: int
) -> _DistinctTokens | None:
    """Only the tokens that occur are touched, so the cost grows with the history, not the vocabulary.

    Padding repeats a real entry, which rewrites one logit with the value it gets anyway: the in-place
    update stays exact and deterministic without a scratch column.
    """
    kept: list[int] = []
    uniques: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    for k, ids in enumerate(token_id_lists):
        if not ids:
            continue
        unique, count = torch.unique(torch.tensor(ids, dtype=torch.int64), return_counts=True)  # sorted
        if int(unique[0]) < 0 or int(unique[-1]) >= vocab_size:
            raise ValueError(f"token ids counted by the penalties must be in [0, {vocab_size})")
        kept.append(k)
        uniques.append(unique)
        counts.append(count)
    if not kept:
        return None
    width = max(u.numel() for u in uniques)
    token_ids = torch.stack([_pad_with_first(u, width) for u in uniques])  # [R, U]
    row_ids = torch.tensor([rows[k] for k in kept], dtype=torch.int64).unsqueeze(1)  # [R, 1]
    return _DistinctTokens(
        kept=kept,
        flat_index=row_ids * vocab_size + token_ids,
        counts=torch.stack([_pad_with_first(c, width) for c in counts]),
    )


def _pad_with_first(values: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([values, values[:1].expand(width - values.numel())])


def _check_token_id(token_id: int, vocab_size: int, what: str) -> None:
    if not 0 <= token_id < vocab_size:
        raise ValueError(f"{what} token id {token_id} is outside the vocabulary [0, {vocab_size})")
