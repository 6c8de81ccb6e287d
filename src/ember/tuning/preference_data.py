"""From a validated preference (DPO) JSONL dataset to tokenized pairs, and pairs to packed batches.

Each side of a pair is the row's input followed by one output, rendered and masked as an SFT row would be
(masking.py): only the output's tokens carry weight, so a side's sequence log-probability is the sum over those
tokens. A pair whose longer side exceeds the max context length is dropped, as SFT drops a too-long example:
cutting it would compare two replies of which one lost its end.

A packed batch holds whole pairs, each as two consecutive sequences (preferred, then non-preferred), so a
batch's sequence log-probabilities come out as [pairs, 2]. Pairs are grouped up to a token budget; a pair
alone over the budget is a batch of its own (at most twice the max context length).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ember.tuning.batching import PackedBatch, pack
from ember.tuning.masking import ConversationMasker, MaskingError, TokenizedExample
from ember.tuning.preference_rules import pair_chat_rows


@dataclass(frozen=True)
class PreferencePair:
    preferred: TokenizedExample
    non_preferred: TokenizedExample
    row_index: int  # 0-based index of the dataset row

    @property
    def num_tokens(self) -> int:
        """Input tokens the pair's two sequences take in a packed batch."""
        return self.preferred.num_tokens - 1 + self.non_preferred.num_tokens - 1

    @property
    def num_trained_tokens(self) -> int:
        return self.preferred.num_trained_tokens + self.non_preferred.num_trained_tokens


@dataclass
class PreferenceExamples:
    """The pairs of one dataset file and what tokenizing it found."""

    pairs: list[PreferencePair] = field(default_factory=list)
    rows: int = 0
    rows_without_trained_tokens: int = 0
    dropped_too_long: int = 0
    tokens: int = 0  # both sides of the kept pairs
    trained_tokens: int = 0


def load_pairs(path: str | Path, masker: ConversationMasker, max_context_length: int) -> PreferenceExamples:
    """Tokenize every row of a validated preference JSONL file; MaskingError names the line of a row that
    cannot render."""
    result = PreferenceExamples()
    with open(path, encoding="utf-8-sig") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                pair = tokenize_pair(json.loads(line), masker, result.rows)
            except (MaskingError, json.JSONDecodeError, KeyError, TypeError) as error:
                raise MaskingError(f"{path} line {line_number}: {error}") from None
            result.rows += 1
            if pair is None:
                result.rows_without_trained_tokens += 1
            elif max(pair.preferred.num_tokens, pair.non_preferred.num_tokens) > max_context_length:
                result.dropped_too_long += 1
            else:
                result.pairs.append(pair)
                result.tokens += pair.num_tokens + 2
                result.trained_tokens += pair.num_trained_tokens
    return result


def tokenize_pair(row: dict, masker: ConversationMasker, row_index: int) -> PreferencePair | None:
    """The pair of one valid preference row; None when the template leaves a side without trained tokens."""
    sides = []
    for chat in pair_chat_rows(row):
        examples = masker.tokenize_row(chat, row_index).examples
        if not examples:
            return None
        sides.append(examples[-1])  # only the output is trained: one example, ending with it
    return PreferencePair(sides[0], sides[1], row_index)


def pack_pairs(pairs: list[PreferencePair]) -> PackedBatch:
    """Sequences [2 * len(pairs)]: preferred_0, non_preferred_0, preferred_1, ..."""
    return pack([side for pair in pairs for side in (pair.preferred, pair.non_preferred)])


def plan_pair_steps(
    pairs: list[PreferencePair], seed: int, batch_pairs: int | None, batch_tokens: int
) -> list[list[int]]:
    """Pair indices per optimizer step for one epoch, shuffled with `seed`: `batch_pairs` pairs a step (OpenAI's
    batch_size counts examples, and an example is a pair), or without it as many as fill `batch_tokens`."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    if batch_pairs is not None:
        return [order[i : i + batch_pairs] for i in range(0, len(order), batch_pairs)]
    return pair_micro_batches(order, pairs, batch_tokens)


def pair_micro_batches(indices: list[int], pairs: list[PreferencePair], max_tokens: int) -> list[list[int]]:
    """`indices` in order, cut into consecutive groups of at most `max_tokens` input tokens (a pair over the
    budget alone)."""
    groups: list[list[int]] = []
    current: list[int] = []
    current_tokens = 0
    for index in indices:
        size = pairs[index].num_tokens
        if current and current_tokens + size > max_tokens:
            groups.append(current)
            current, current_tokens = [], 0
        current.append(index)
        current_tokens += size
    if current:
        groups.append(current)
    return groups


def split_pairs(
    pairs: list[PreferencePair], fraction: float, min_pairs: int, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, eval): a seeded `fraction` of the pairs held out, when there are at least `min_pairs`."""
    held = int(len(pairs) * fraction)
    if len(pairs) < min_pairs or held < 1:
        return pairs, []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    eval_indices = set(order[:held])
    train = [p for i, p in enumerate(pairs) if i not in eval_indices]
    return train, [p for i, p in enumerate(pairs) if i in eval_indices]
