"""Drafts read from the request's predicted output (OpenAI / Fireworks Predicted Outputs), following the output
through the edits it makes to the prediction."""

from __future__ import annotations

from ember.engine.speculation.ngram import NgramPositions

# Substitutions one prediction learns at most: each re-indexes the prediction (len * max_n dict entries), and an
# edit that changes more distinct tokens than this is not a rename.
MAX_SUBSTITUTIONS = 8


class PredictionDraft:
    """The request's predicted output, read along with the output.

    A cursor says which predicted token should come next. While the output follows the prediction the cursor
    moves with it; after a mismatch the longest tail of the output that occurs in the prediction re-finds it
    (preferring the place ahead of where it was lost, as an edit usually changes a span and then resumes),
    and failing that the output token is taken as a substitute for the predicted one.

    A substitute the next output token confirms (the output went on as predicted) is learned: from then on the
    predicted token is drafted as its substitute everywhere, so the common edit, a rename (`x` -> `total` at
    every use), misses once per spelling instead of at every use. A learned substitution is dropped as soon as
    the output keeps the original token where it was predicted.

    The draft's length follows how surely the output is in step: 2**run tokens, where run counts the output
    tokens just read in step (matched at the cursor, or the re-finding n-gram beyond its first token); nothing
    right after a token the prediction did not have. A verified row costs about a quarter of a plain step on
    the CPU, so a long draft from a place just re-found would mostly be paid for and refused, while a pause
    after each edit (n-gram lookup's back-off) cost the rest of the edit's neighbourhood (docs/decisions.md).
    """

    def __init__(self, prediction: tuple[int, ...], max_n: int) -> None:
        self._original = prediction
        self._substitutes: dict[int, int] = {}  # predicted token -> the token the output writes instead
        self._expected = prediction  # the prediction with the learned substitutions applied
        self._positions = NgramPositions(prediction, max_n)
        # (predicted, written): a substitute awaiting the next output token's confirmation
        self._pending: tuple[int, int] | None = None
        self._cursor = 0  # index into the prediction of the next expected token
        self._num_read = 0  # output tokens already compared with the prediction
        self._run = 0  # output tokens just read in step with the prediction

    @property
    def substitutes(self) -> dict[int, int]:
        return dict(self._substitutes)

    def propose(self, token_ids: list[int], num_prompt_tokens: int, max_tokens: int) -> list[int]:
        output = token_ids[num_prompt_tokens:]
        for index in range(self._num_read, len(output)):
            self._read(output[index], output[max(0, index + 1 - self._positions.max_n) : index + 1])
        self._num_read = len(output)
        if self._run == 0:
            return []
        length = min(max_tokens, 1 << min(self._run, 16))
        return list(self._expected[self._cursor : self._cursor + length])

    def _read(self, token: int, tail: list[int]) -> None:
        """Moves the cursor past `token`, the newest output token; `tail` ends with it."""
        cursor = self._cursor
        pending, self._pending = self._pending, None
        if cursor < len(self._expected):
            if self._expected[cursor] == token:
                if pending is not None:
                    self._learn(*pending)
                self._cursor, self._run = cursor + 1, self._run + 1
                return
            if self._original[cursor] == token:  # the output keeps a token a substitution changed
                self._forget(token)
                self._cursor, self._run = cursor + 1, self._run + 1
                return
        # the match must reach past the predicted token just refused, or the same refusal would come again
        found = self._positions.find(tail, cursor + 1)
        # One matching token is no evidence of where the output is (a rename to a word the prediction also holds
        # would send the cursor there): within the prediction that reads as a substitute, and the next token
        # either confirms it or re-finds the place with two.
        if found is not None and (found.length > 1 or cursor >= len(self._original)):
            self._cursor, self._run = found.position, found.length - 1
            return
        if cursor < len(self._original):
            self._pending = (self._original[cursor], token)
        self._cursor, self._run = cursor + 1, 0

    def _learn(self, predicted: int, written: int) -> None:
        if predicted not in self._substitutes and len(self._substitutes) >= MAX_SUBSTITUTIONS:
            return
        self._substitutes[predicted] = written
        self._reindex()

    def _forget(self, predicted: int) -> None:
        if self._substitutes.pop(predicted, None) is not None:
            self._reindex()

    def _reindex(self) -> None:
        substitutes = self._substitutes
        self._expected = tuple(substitutes.get(t, t) for t in self._original)
        self._positions = NgramPositions(self._expected, self._positions.max_n)
