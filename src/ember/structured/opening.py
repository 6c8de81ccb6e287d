"""The reply's first token decided by a rule (OpeningChoice): a tool call when the model's probability of
opening the call marker reaches a threshold, text otherwise. Sampling's argmax would ask "is the marker the
single likeliest token?", which a small model answers no even when it gives the marker a real share; the rule
asks "does it give the marker at least this share?" (docs/decisions.md, "#14: tool_choice auto on the default
model")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ember.structured.spec import OpeningChoice


@dataclass(frozen=True)
class OpeningRule:
    """One sequence's pending decision: the choice and the vocabulary tokens that open its marker."""

    choice: OpeningChoice
    openers: (
        torch.Tensor
    )  # [V] bool: tokens whose text is a non-empty prefix of the marker (or starts with it)


def opener_mask(marker: str, vocab_size: int, token_bytes: Callable[[int], bytes]) -> torch.Tensor:
    """[vocab_size] bool: the tokens a reply that starts with `marker` can start with."""
    target = marker.encode("utf-8")
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for token_id in range(vocab_size):
        try:
            piece = token_bytes(token_id)
        except ValueError:  # a hole in the vocabulary
            continue
        if piece and (target.startswith(piece) or piece.startswith(target)):
            mask[token_id] = True
    return mask


def opening_probability(logits: torch.Tensor, openers: torch.Tensor) -> float:
    """The model's probability (softmax of its raw logits [V]) that the reply starts with the marker."""
    vocab = min(logits.shape[-1], openers.shape[-1])
    probs = torch.softmax(logits[:vocab].float(), dim=-1)
    return float(probs[openers[:vocab]].sum())


def decided_mask(
    logits: torch.Tensor, rule: OpeningRule, allowed: torch.Tensor | None
) -> tuple[torch.Tensor, bool]:
    """The first token's allowed mask [V] after the decision, and whether it opens the marker. `allowed`: the
    grammar's mask (None: every token). When the decision leaves nothing the grammar allows, the grammar's mask
    stands unchanged (the grammar has the last word)."""
    vocab = logits.shape[-1]
    openers = _fit(rule.openers, vocab)
    opens = opening_probability(logits, openers) >= rule.choice.threshold
    base = torch.ones(vocab, dtype=torch.bool) if allowed is None else allowed
    decided = base & openers if opens else base & ~openers
    if not bool(decided.any()):
        return base, opens
    return decided, opens


def _fit(mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """A tokenizer-sized mask fitted to the model's logits (which may have padding rows)."""
    if mask.shape[0] == vocab:
        return mask
    if mask.shape[0] > vocab:
        return mask[:vocab]
    return torch.cat([mask, torch.zeros(vocab - mask.shape[0], dtype=torch.bool)])
