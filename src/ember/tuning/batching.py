"""From a validated JSONL dataset to packed, padding-free training batches.

Examples are concatenated into one flattened sequence of at most `max_batch_tokens` tokens; each keeps its own
positions and causal attention (AttentionMetadata.for_prefill_without_cache over the example lengths), so no
token attends across examples and no compute goes to padding.

Too-long examples are dropped, not truncated: cutting a conversation removes the end of a reply or its
end-of-turn token and would teach the model to stop mid-sentence (or never stop). Upload validation already
warns about such rows; `TrainingExamples.dropped_too_long` counts them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ember.models.attention_metadata import AttentionMetadata
from ember.tuning.masking import ConversationMasker, MaskingError, TokenizedExample


@dataclass
class TrainingExamples:
    """The examples of one dataset file and what tokenizing it found."""

    examples: list[TokenizedExample] = field(default_factory=list)
    rows: int = 0
    rows_split_per_turn: int = 0
    rows_without_trained_tokens: int = 0
    dropped_too_long: int = 0
    dataset_tokens: int = 0  # every row rendered once
    tuned_tokens: int = 0  # tokens of the kept examples (split rows repeat their shared context)
    trained_tokens: int = 0  # tokens of the kept examples that carry loss


def load_examples(path: str | Path, masker: ConversationMasker, max_context_length: int) -> TrainingExamples:
    """Tokenize every row of a validated JSONL file; MaskingError names the line of a row that cannot render."""
    if max_context_length < 2:
        raise ValueError(f"max_context_length must be at least 2, got {max_context_length}")
    result = TrainingExamples()
    with open(path, encoding="utf-8-sig") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                tokens = masker.tokenize_row(json.loads(line), row_index=result.rows)
            except (MaskingError, json.JSONDecodeError) as error:
                raise MaskingError(f"{path} line {line_number}: {error}") from None
            result.rows += 1
            result.dataset_tokens += tokens.dataset_tokens
            result.rows_split_per_turn += tokens.split_per_turn
            if not tokens.examples:
                result.rows_without_trained_tokens += 1
            for example in tokens.examples:
                if example.num_tokens > max_context_length:
                    result.dropped_too_long += 1
                    continue
                result.examples.append(example)
                result.tuned_tokens += example.num_tokens
                result.trained_tokens += example.num_trained_tokens
    return result


@dataclass(frozen=True)
class PackedBatch:
    """Several examples flattened into one sequence; position t learns to predict `target_ids[t]`."""

    input_ids: torch.Tensor  # [T] int64, each example without its last token
    positions: torch.Tensor  # [T] int64, restarting at 0 for each example
    target_ids: torch.Tensor  # [T] int64, each example without its first token
    loss_weights: torch.Tensor  # [T] fp32, weight of predicting target_ids[t]; 0 for context
    seq_lens: list[int]  # [S] tokens per example in this batch

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_trained_tokens(self) -> int:
        return int((self.loss_weights > 0).sum())

    def attention(self) -> AttentionMetadata:
        return AttentionMetadata.for_prefill_without_cache(self.seq_lens)


def pack(examples: list[TokenizedExample]) -> PackedBatch:
    """Flatten examples (each at least 2 tokens) into one padding-free batch."""
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    weights: list[float] = []
    lens: list[int] = []
    for example in examples:
        n = example.num_tokens - 1
        if n < 1:
            raise ValueError(f"example of row {example.row_index} has {example.num_tokens} token(s); needs 2")
        ids += example.input_ids[:-1]
        targets += example.input_ids[1:]
        weights += example.loss_weights[1:]
        positions += range(n)
        lens.append(n)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        target_ids=torch.tensor(targets, dtype=torch.int64),
        loss_weights=torch.tensor(weights, dtype=torch.float32),
        seq_lens=lens,
    )


def plan_batches(
    examples: list[TokenizedExample],
    max_batch_tokens: int,
    seed: int,
    max_batch_examples: int | None = None,
) -> list[list[int]]:
    """Example indices per batch for one epoch, shuffled with `seed`.

    Without `max_batch_examples` a batch is filled greedily up to `max_batch_tokens` input tokens. With it, a
    batch is that many examples (OpenAI's batch_size; the last batch of an epoch may be smaller) whatever their
    length: `micro_batches` then splits it into packs of <= `max_batch_tokens` tokens for the forward passes.
    The plan depends only on its arguments, so a resumed run replays the very same batches.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    if max_batch_examples is not None and max_batch_examples < 1:
        raise ValueError(f"max_batch_examples must be positive, got {max_batch_examples}")
    order = [i for i, e in enumerate(examples) if e.num_trained_tokens > 0]
    random.Random(seed).shuffle(order)
    for index in order:
        size = examples[index].num_tokens - 1
        if size > max_batch_tokens:
            raise ValueError(
                f"an example of {size + 1} tokens does not fit the batch size of {max_batch_tokens} tokens; "
                "raise the batch size to at least the max context length"
            )
    if max_batch_examples is not None:
        return [order[i : i + max_batch_examples] for i in range(0, len(order), max_batch_examples)]
    return micro_batches(order, examples, max_batch_tokens)


def micro_batches(indices: list[int], examples: list[TokenizedExample], max_tokens: int) -> list[list[int]]:
    """`indices` in order, cut into consecutive packs of at most `max_tokens` input tokens each."""
    packs: list[list[int]] = []
    current: list[int] = []
    current_tokens = 0
    for index in indices:
        size = examples[index].num_tokens - 1
        if current and current_tokens + size > max_tokens:
            packs.append(current)
            current, current_tokens = [], 0
        current.append(index)
        current_tokens += size
    if current:
        packs.append(current)
    return packs
