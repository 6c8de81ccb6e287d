"""Per-sequence grammar state and the batched token masks built from it."""

from __future__ import annotations

import llguidance
import torch

from ember.structured.grammar_check import clean_message, parser_limits

# Bit i of a packed mask word stands for token 32 * word + i.
_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


class GrammarMatcher:
    """Where one sequence stands in its grammar: which tokens may come next, and whether it may end."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str) -> None:
        self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=parser_limits())
        if self._matcher.is_error():
            raise ValueError(f"invalid grammar: {clean_message(self._matcher.get_error())}")
        self.num_words = (tokenizer.vocab_size + 31) // 32

    def fill_bitmask(self, words: torch.Tensor) -> None:
        """Write the allowed next tokens into words [W] int32 (contiguous, on the CPU), one bit per token."""
        if words.dtype != torch.int32 or words.shape != (self.num_words,) or not words.is_contiguous():
            raise ValueError(f"bitmask row must be a contiguous int32 tensor of shape ({self.num_words},)")
        self._matcher.unsafe_compute_mask_ptr(words.data_ptr(), self.num_words * 4)

    def accept(self, token_id: int) -> None:
        """Advance past one sampled token; ValueError if the grammar does not allow it."""
        if not self._matcher.consume_token(token_id):
            error = clean_message(self._matcher.get_error())
            raise ValueError(f"token {token_id} violates the output grammar: {error}")

    def num_valid(self, token_ids: list[int]) -> int:
        """How many of token_ids, from the first, the grammar allows in turn from here (nothing changes)."""
        return self._matcher.validate_tokens(token_ids)

    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens accepted tokens (drafts speculative verification did not keep)."""
        if num_tokens and not self._matcher.rollback(num_tokens):
            raise ValueError(f"cannot roll the grammar back by {num_tokens} tokens")

    @property
    def is_finished(self) -> bool:
        """The grammar is complete and cannot be extended: nothing but end-of-sequence may follow."""
        return self._matcher.is_stopped()

    @property
    def is_accepting(self) -> bool:
        """The output so far is a complete sentence of the grammar (it may still be extended)."""
        return self._matcher.is_accepting()


def allowed_token_masks(matchers: list[GrammarMatcher], vocab_size: int) -> torch.Tensor:
    """Bool masks [R, vocab_size], one row per matcher; tokens the grammar's vocabulary lacks stay False."""
    if not matchers:
        return torch.zeros(0, vocab_size, dtype=torch.bool)
    num_words = matchers[0].num_words
    words = torch.empty(len(matchers), num_words, dtype=torch.int32)  # [R, W]
    for row, matcher in enumerate(matchers):
        matcher.fill_bitmask(words[row])
    bits = (words.unsqueeze(-1) >> _BIT_SHIFTS) & 1  # [R, W, 32]
    masks = bits.view(len(matchers), num_words * 32).bool()  # [R, 32W]
    if masks.shape[1] >= vocab_size:
        return masks[:, :vocab_size]
    padded = torch.zeros(len(matchers), vocab_size, dtype=torch.bool)  # model rows beyond the tokenizer
    padded[:, : masks.shape[1]] = masks
    return padded
