"""When a sequence stops, and which of its text is safe to stream.

Stop strings are matched on the detokenized text across token boundaries and excluded from the output (kept,
with nothing after them, under vLLM's include_stop_str_in_output).
Text that could still grow into a stop string is held back until it cannot, so the deltas a client receives
always concatenate to the final text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class StopResult:
    emit_text: str  # text that is now safe to hand to the client
    finish_reason: str | None = None  # "stop" | "length" | None while running
    stop_reason: str | int | None = None  # the stop string or stop token id; None for EOS and length

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class StopChecker:
    """Checks one sequence after each generated token.

    EOS (unless ignore_eos) and params.stop_token_ids end the sequence with "stop" once min_tokens tokens
    exist, and their own text is not appended; stop strings do the same and cut the text where they start;
    reaching max_tokens ends it with "length".
    """

    def __init__(self, params: SamplingParams, eos_token_ids: tuple[int, ...], max_tokens: int) -> None:
        """max_tokens: the sequence's budget, as ember.engine.generation_budget resolved it."""
        if max_tokens < 1:  # a guard of this argument, with the budget rule's own message
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if any(not stop for stop in params.stop):
            raise ValueError("stop strings must not be empty")
        self._stops = list(dict.fromkeys(params.stop))
        self._stop_token_ids = set(params.stop_token_ids)
        self._include_stop = params.include_stop_str_in_output
        self._eos_token_ids = set() if params.ignore_eos else set(eos_token_ids)
        self._min_tokens = params.min_tokens
        self._max_tokens = max_tokens
        self._held = ""  # text not yet emitted because it may be the start of a stop string
        self._text = ""  # everything emitted
        self._finished = False

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return self._text

    def check(self, token_id: int, new_text: str, num_output_tokens: int) -> StopResult:
        """Account for one generated token and its text; num_output_tokens counts it too."""
        if self._finished:
            raise ValueError("check() called on a sequence that has already finished")
        may_stop = num_output_tokens >= self._min_tokens
        if may_stop and token_id in self._stop_token_ids:
            return self._finish("stop", token_id, self._held + (new_text if self._include_stop else ""))
        if may_stop and token_id in self._eos_token_ids:
            return self._finish("stop", None, self._held)

        buffer = self._held + new_text
        if may_stop and self._stops:
            match = self._earliest_stop(buffer, new_from=len(self._held))
            if match is not None:
                start, stop = match
                end = start + len(stop) if self._include_stop else start
                return self._finish("stop", stop, buffer[:end])
        if num_output_tokens >= self._max_tokens:
            return self._finish("length", None, buffer)

        held = self._longest_partial_stop(buffer)
        self._held = buffer[len(buffer) - held :] if held else ""
        return StopResult(emit_text=self._record(buffer[: len(buffer) - held]))

    def flush(self, tail: str = "") -> str:
        """Release held text plus `tail` (the detokenizer's last bytes) when the sequence ends by length."""
        released = self._held + tail
        self._held = ""
        return self._record(released)

    def _finish(self, reason: str, stop_reason: str | int | None, emit: str) -> StopResult:
        self._finished = True
        self._held = ""
        return StopResult(emit_text=self._record(emit), finish_reason=reason, stop_reason=stop_reason)

    def _record(self, emit: str) -> str:
        self._text += emit
        return emit

    def _earliest_stop(self, buffer: str, new_from: int) -> tuple[int, str] | None:
        """(start, stop string) of the stop string that completes first and ends inside buffer[new_from:].

        Held text alone never contains a whole stop string that may count (it would have matched already, or
        it arrived before min_tokens), so only matches reaching into the new text are considered. Completing
        first means the earliest end, as if the text had arrived one character at a time; among equal ends
        the longest string wins.
        """
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            start = buffer.find(stop, max(0, new_from - len(stop) + 1))
            if start < 0:
                continue
            candidate = (start + len(stop), start, stop)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        return None if best is None else (best[1], best[2])

    def _longest_partial_stop(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest
