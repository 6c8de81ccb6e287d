"""Log-probabilities reported to the API: chosen token, its rank and the top alternatives.

Values come from the model's raw distribution (log_softmax of unprocessed logits), as vLLM v1 reports by
default, so they do not change with temperature, penalties or truncation.
"""

from __future__ import annotations

import torch

from ember.engine.outputs import TokenLogprob

# Rows of log_softmax computed at once for prompt logprobs; bounds memory at ~50 MB for a 49k vocabulary.
PROMPT_CHUNK_ROWS = 256


def gather_token_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: list[int]
) -> list[TokenLogprob]:
    """One TokenLogprob per row of `logprobs` [L, V] for the token in `token_ids` [L], with num_top[i]
    alternatives."""
    if logprobs.shape[0] != token_ids.shape[0] or len(num_top) != token_ids.shape[0]:
        raise ValueError("logprobs, token_ids and num_top must have one entry per row")
    if logprobs.shape[0] == 0:
        return []
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))  # [L, 1]
    # Rank 1 is the most likely token; ties share the better rank.
    ranks = (logprobs > chosen).sum(dim=1) + 1  # [L]
    widest = min(max(num_top), logprobs.shape[1])
    if widest > 0:
        top_values, top_ids = logprobs.topk(widest, dim=1)  # [L, K]
        top_values_list, top_ids_list = top_values.tolist(), top_ids.tolist()
    else:
        top_values_list = top_ids_list = [[] for _ in num_top]
    result: list[TokenLogprob] = []
    for i, (token_id, value, rank) in enumerate(
        zip(token_ids.tolist(), chosen.squeeze(1).tolist(), ranks.tolist(), strict=True)
    ):
        k = num_top[i]
        top = list(zip(top_ids_list[i][:k], top_values_list[i][:k], strict=True))
        result.append(TokenLogprob(token_id=token_id, logprob=value, rank=rank, top=top))
    return result


def prompt_token_logprobs(
    logits: torch.Tensor, prompt_token_ids: list[int], num_top: int
) -> list[TokenLogprob | None]:
    """Logprobs of prompt tokens 1..P given raw logits [P, V], where row i is the model output at position i.

    Row i scores prompt_token_ids[i + 1], so len(prompt_token_ids) must be P + 1. The first entry is None:
    nothing predicts the first prompt token.
    """
    if logits.dim() != 2:
        raise ValueError(f"prompt logits must be [P, V], got shape {tuple(logits.shape)}")
    num_rows = logits.shape[0]
    if len(prompt_token_ids) != num_rows + 1:
        raise ValueError(
            f"prompt_token_ids must hold one more id than logits has rows (row i scores token i + 1): "
            f"got {len(prompt_token_ids)} ids for {num_rows} rows"
        )
    if num_top < 0:
        raise ValueError(f"the number of top prompt logprobs must be non-negative, got {num_top}")
    targets = torch.tensor(prompt_token_ids[1:], dtype=torch.int64)  # [P]
    vocab_size = logits.shape[1]
    if num_rows and (int(targets.min()) < 0 or int(targets.max()) >= vocab_size):
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    result: list[TokenLogprob | None] = [None]
    for start in range(0, num_rows, PROMPT_CHUNK_ROWS):
        stop = min(start + PROMPT_CHUNK_ROWS, num_rows)
        chunk = torch.log_softmax(logits[start:stop].float(), dim=-1)  # [C, V]
        result.extend(gather_token_logprobs(chunk, targets[start:stop], [num_top] * (stop - start)))
    return result
