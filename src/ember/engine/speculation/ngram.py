"""n-gram lookup, the search both draft sources use: where did the last n tokens occur before, and what
followed them there."""

from __future__ import annotations

from typing import NamedTuple


class LatestNgramIndex:
    """The latest end position of every n-gram (min_n <= n <= max_n) of an append-only token list, built as
    the list grows: each token is indexed once, so a lookup costs max_n - min_n + 1 dict probes."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n
        self._ends: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are in _ends

    def continuation(self, tokens: list[int], max_tokens: int) -> list[int]:
        """What followed the latest earlier occurrence of the longest suffix of `tokens` that occurred before,
        up to max_tokens. A match running into the suffix itself repeats with its period (a loop continues)."""
        last = len(tokens) - 1
        self._index_until(tokens, last)  # the suffix itself (ending at `last`) is not an earlier occurrence
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            end = self._ends.get(tuple(tokens[last - n + 1 :]))
            if end is None:
                continue
            period = last - end
            draft: list[int] = []
            for i in range(max_tokens):
                position = end + 1 + i
                draft.append(tokens[position] if position <= last else draft[i - period])
            return draft
        return []

    def _index_until(self, tokens: list[int], stop: int) -> None:
        for end in range(self._indexed, stop):
            for n in range(self.min_n, min(self.max_n, end + 1) + 1):
                self._ends[tuple(tokens[end - n + 1 : end + 1])] = end
        self._indexed = max(self._indexed, stop)


class Found(NamedTuple):
    position: int  # the index after the occurrence
    length: int  # tokens of the tail that matched there


class NgramPositions:
    """Every end position of every n-gram (1 <= n <= max_n) of a fixed token list, ascending."""

    def __init__(self, tokens: tuple[int, ...], max_n: int) -> None:
        self.tokens = tokens
        self.max_n = max_n
        self._ends: dict[tuple[int, ...], list[int]] = {}
        for end in range(len(tokens)):
            for n in range(1, min(max_n, end + 1) + 1):
                self._ends.setdefault(tokens[end - n + 1 : end + 1], []).append(end)

    def find(self, suffix: list[int], anchor: int) -> Found | None:
        """The position after an occurrence of the longest matching tail of `suffix` (at most max_n tokens):
        the first occurrence ending at or after `anchor` - 1 (the reader moves forward), else the last one."""
        for n in range(min(self.max_n, len(suffix)), 0, -1):
            ends = self._ends.get(tuple(suffix[len(suffix) - n :]))
            if not ends:
                continue
            forward = [end for end in ends if end + 1 >= anchor]
            return Found((forward[0] if forward else ends[-1]) + 1, n)
        return None
