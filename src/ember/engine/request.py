"""One API request as the engine tracks it (its prompt, parameters and metrics, fanned out into n / best_of
sequences), and the caller-facing output state of each of those sequences: text, logprobs, deltas."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.engine.detokenizer import IncrementalDetokenizer
from ember.engine.outputs import CompletionOutput, RequestMetrics, TokenLogprob
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import Sequence
from ember.engine.stop_checker import StopChecker


@dataclass
class SequenceOutputState:
    """Text, logprobs and the delta not yet handed to the caller, for one scheduled Sequence."""

    sequence: Sequence
    request_id: str  # the API request this sequence belongs to
    index: int
    detokenizer: IncrementalDetokenizer
    stop_checker: StopChecker
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[TokenLogprob] = field(default_factory=list)

    def take_output(self, include_delta_logprobs: bool) -> CompletionOutput:
        """The sequence as of now, with the delta since the previous call; resets the delta."""
        output = CompletionOutput(
            index=self.index,
            text=self.text,
            token_ids=list(self.sequence.output_token_ids),
            delta_text=self.delta_text,
            delta_token_ids=self.delta_token_ids,
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            delta_logprobs=self.delta_logprobs if include_delta_logprobs else None,
            cumulative_logprob=self.cumulative_logprob,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )
        self.delta_text = ""
        self.delta_token_ids = []
        self.delta_logprobs = []
        return output


@dataclass
class Request:
    """One caller's request: its prompt, parameters and the num_samples sequences generated for it."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    sequences: list[SequenceOutputState] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    num_cached_tokens: int = 0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return all(seq.finish_reason is not None for seq in self.sequences)

    @property
    def streams_incrementally(self) -> bool:
        """best_of > n must see every sequence finish before it can choose, so it reports only at the end."""
        return self.params.best_of is None or self.params.best_of == self.params.n

    def chosen_sequences(self) -> list[SequenceOutputState]:
        if self.streams_incrementally:
            return self.sequences
        best = sorted(self.sequences, key=lambda s: s.cumulative_logprob, reverse=True)[: self.params.n]
        return sorted(best, key=lambda s: s.index)
