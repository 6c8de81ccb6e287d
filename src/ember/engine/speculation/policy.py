"""When a decoding sequence drafts, and how many tokens: the scheduler's side of speculation (no torch).

The rule: draft only in steps with at most `max_batch` decoding sequences, never past the step's token budget,
and never more tokens than the sequence may still generate after the one the verification always yields, so
max_tokens is never overshot and no KV slot is taken that the sequence could not keep.
"""

from __future__ import annotations

from ember.engine.sequence import Sequence


class DraftPolicy:
    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch

    def speculates(self, num_decoding: int) -> bool:
        """Whether this step drafts at all, given how many sequences decode in it."""
        return 0 < num_decoding <= self.max_batch

    def draft(self, sequence: Sequence, budget_left: int) -> list[int]:
        """The draft tokens to verify after the sequence's last token this step ([] for a plain decode)."""
        drafter = sequence.drafter
        if drafter is None or _opening_pending(sequence):
            return []
        room = min(budget_left, sequence.max_tokens - sequence.num_output_tokens - 1)
        if room <= 0:
            return []
        return drafter.propose(sequence.all_token_ids, sequence.num_prompt_tokens, room)[:room]


def _opening_pending(sequence: Sequence) -> bool:
    """The first output token is decided by rule (structured/opening.py), which plain sampling applies and
    verification does not: no draft rides along with it (a prompt-lookup draft after a cached prompt could)."""
    structured = sequence.sampling_params.structured
    return sequence.num_output_tokens == 0 and structured is not None and structured.opening is not None
