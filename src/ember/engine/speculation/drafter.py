"""Draft sources behind one interface, and the per-sequence drafter that asks them in turn.

A DraftSource proposes the tokens it expects next, given everything the sequence holds; a small draft model
would be one more implementation. The verification never trusts a draft: it only decides how many steps of
the target model a step of verification saves.
"""

from __future__ import annotations

from typing import Protocol

from ember.engine.speculation.config import DraftSettings
from ember.engine.speculation.ngram import LatestNgramIndex
from ember.engine.speculation.prediction_draft import PredictionDraft

# Unless lookup is 'on', a lookup draft of which nothing was kept pauses lookup for this many steps, doubling per
# further failure up to the cap, and any kept token starts over. Each verified row costs about a quarter of a
# plain step (docs/decisions.md), so a sequence whose text repeats nothing must stop paying for it.
_FIRST_BACKOFF = 4
_MAX_BACKOFF = 64
# ... and the next draft is at most twice the last kept run (at least this long): a partly kept draft is
# followed by a shorter one, a wholly kept one by a longer one, up to num_speculative_tokens.
_MIN_ADAPTIVE_LENGTH = 2


class DraftSource(Protocol):
    def propose(self, token_ids: list[int], num_prompt_tokens: int, max_tokens: int) -> list[int]:
        """Up to max_tokens tokens expected to follow token_ids (prompt then output); [] when no guess."""
        ...


class PromptLookupDraft:
    """n-gram prompt lookup: the continuation of the longest suffix (min_n..max_n tokens) of prompt + output
    at its latest earlier occurrence (transformers' prompt_lookup_num_tokens, vLLM's `ngram` method)."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self._index = LatestNgramIndex(min_n, max_n)

    def propose(self, token_ids: list[int], num_prompt_tokens: int, max_tokens: int) -> list[int]:
        return self._index.continuation(token_ids, max_tokens)


class SequenceDrafter:
    """One sequence's drafting: its sources in order (prediction first, which sizes its own drafts), and for
    n-gram lookup the draft length and (unless lookup is 'on') the back-off that keeps failing drafts from
    costing a sequence whose text repeats nothing."""

    def __init__(self, settings: DraftSettings) -> None:
        self.settings = settings
        self._prediction: PredictionDraft | None = None
        if settings.prediction_token_ids:
            self._prediction = PredictionDraft(settings.prediction_token_ids, settings.max_n)
        self._lookup: DraftSource | None = None
        if settings.prompt_lookup != "off":
            self._lookup = PromptLookupDraft(settings.min_n, settings.max_n)
        self._backoff = 0  # the length of the next pause after a failed lookup draft
        self._paused = 0  # steps left without lookup drafts
        self._adaptive = settings.prompt_lookup != "on"
        self._length = settings.num_speculative_tokens  # the next lookup draft's length at most
        self._last_was_lookup = False  # whom the next verdict (observe) is about

    @staticmethod
    def for_settings(settings: DraftSettings) -> SequenceDrafter | None:
        return SequenceDrafter(settings) if settings.drafts else None

    def propose(self, token_ids: list[int], num_prompt_tokens: int, max_tokens: int) -> list[int]:
        max_tokens = min(max_tokens, self.settings.num_speculative_tokens)
        self._last_was_lookup = False
        if max_tokens <= 0:
            return []
        if self._prediction is not None:
            draft = self._prediction.propose(token_ids, num_prompt_tokens, max_tokens)
            if draft:
                return draft
        if self._lookup is None:
            return []
        if self._paused:
            self._paused -= 1
            return []
        draft = self._lookup.propose(token_ids, num_prompt_tokens, min(max_tokens, self._length))
        self._last_was_lookup = bool(draft)
        return draft

    def observe(self, num_drafted: int, num_accepted: int) -> None:
        """The verification's verdict on the last draft (a prediction's drafts size themselves)."""
        if not self._adaptive or not self._last_was_lookup or num_drafted == 0:
            return
        limit = self.settings.num_speculative_tokens
        self._length = min(limit, max(_MIN_ADAPTIVE_LENGTH, 2 * num_accepted))
        if num_accepted:
            self._backoff = 0
            return
        self._backoff = min(_MAX_BACKOFF, max(_FIRST_BACKOFF, self._backoff * 2))
        self._paused = self._backoff
