"""Logprobs in the two OpenAI formats: legacy completions (parallel lists) and chat (`content[]` with bytes)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ember.engine.outputs import TokenLogprob

if TYPE_CHECKING:
    from ember.models.tokenizer import Tokenizer

# JSON has no -inf; OpenAI-compatible servers report impossible tokens with this floor instead.
LOGPROB_FLOOR = -9999.0


def finite(logprob: float) -> float:
    return LOGPROB_FLOOR if math.isnan(logprob) or logprob < LOGPROB_FLOOR else logprob


class LegacyLogprobs:
    """The `logprobs` object of a completion choice, grown piece by piece so streaming can emit slices.

    text_offset[i] is where tokens[i] starts in the choice's text (echoed prompt included).
    """

    def __init__(self, tokenizer: Tokenizer, num_top: int, text_offset: int = 0) -> None:
        self.tokenizer = tokenizer
        self.num_top = num_top
        self.next_offset = text_offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, token_ids: list[int], logprobs: list[TokenLogprob | None]) -> dict[str, Any]:
        """Appends tokens with their logprobs (None: the first prompt token has none); returns just this slice."""
        start = len(self.tokens)
        for token_id, entry in zip(token_ids, logprobs, strict=True):
            text = self.tokenizer.token_text(token_id)
            self.tokens.append(text)
            self.text_offset.append(self.next_offset)
            self.next_offset += len(text)
            if entry is None:
                self.token_logprobs.append(None)
                self.top_logprobs.append(None)
                continue
            self.token_logprobs.append(finite(entry.logprob))
            top: dict[str, float] = {}
            for alt_id, alt_logprob in entry.top[: self.num_top]:
                top.setdefault(self.tokenizer.token_text(alt_id), finite(alt_logprob))
            self.top_logprobs.append(top)
        return self._slice(start)

    def as_dict(self) -> dict[str, Any]:
        return self._slice(0)

    def _slice(self, start: int) -> dict[str, Any]:
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }


def _chat_entry(tokenizer: Tokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    return {
        "token": tokenizer.token_text(token_id),
        "logprob": finite(logprob),
        "bytes": list(tokenizer.token_bytes(token_id)),
    }


def chat_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob], num_top: int) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    content = []
    for entry in logprobs:
        item = _chat_entry(tokenizer, entry.token_id, entry.logprob)
        item["top_logprobs"] = [_chat_entry(tokenizer, alt_id, lp) for alt_id, lp in entry.top[:num_top]]
        content.append(item)
    return {"content": content, "refusal": None}
