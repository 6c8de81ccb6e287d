"""One API request as the engine tracks it (its prompt, parameters and metrics, fanned out into n / best_of
sequences), and the caller-facing output state of each of those sequences: text, logprobs, deltas."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from ember.engine.detokenizer import Decoder, IncrementalDetokenizer
from ember.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import Sequence, SequenceStatus
from ember.engine.stop_checker import StopChecker, StopResult

FINISH_STATUS = {
    "stop": SequenceStatus.FINISHED_STOPPED,
    "length": SequenceStatus.FINISHED_LENGTH,
    "abort": SequenceStatus.FINISHED_ABORTED,
    "error": SequenceStatus.FINISHED_ERROR,
}


def child_sequence_id(request_id: str, index: int, count: int) -> str:
    return request_id if count == 1 else f"{request_id}#{index}"


def child_seed(seed: int, index: int) -> int:
    """Distinct, reproducible streams for the n samples of one seeded request."""
    return (seed * 1_000_003 + index) % (2**63)


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

    def add_token(self, token: int, logprob: TokenLogprob | None) -> StopResult:
        """Append one sampled token to the sequence and its text; says whether it ends the sequence."""
        sequence = self.sequence
        sequence.append_output_token(token)
        self.delta_token_ids.append(token)
        if logprob is not None and self.logprobs is not None:
            self.logprobs.append(logprob)
            self.delta_logprobs.append(logprob)
            self.cumulative_logprob += logprob.logprob
        new_text = self.detokenizer.add_tokens([token])
        stop = self.stop_checker.check(token, new_text, sequence.num_output_tokens)
        self.emit(stop.emit_text)
        return stop

    def emit(self, text: str) -> None:
        self.text += text
        self.delta_text += text

    def end(self, reason: str, stop_reason: str | int | None, flush: bool) -> None:
        """Record the finish; `flush` releases text held back as a possible stop string, and incomplete bytes."""
        self.finish_reason = reason
        self.stop_reason = stop_reason
        if flush:
            self.emit(self.stop_checker.flush(self.detokenizer.flush()))

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
    accepted_prediction_tokens: int = 0  # speculative decoding: drafts kept in the output
    rejected_prediction_tokens: int = 0  # drafted and verified, but not kept

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

    def take_output(self) -> RequestOutput | None:
        """What the caller sees now, with the deltas since the last call; None while a best_of request that
        must choose at the end is still running."""
        finished = self.finished
        if not finished and not self.streams_incrementally:
            return None
        want_lps = self.params.logprobs is not None
        outs = []
        for new_index, state in enumerate(self.chosen_sequences()):
            out = state.take_output(want_lps)
            out.index = new_index
            if not want_lps:
                out.logprobs = None
            if not self.streams_incrementally:  # reported once, whole: the delta is everything
                out.delta_text, out.delta_token_ids = out.text, list(out.token_ids)
                out.delta_logprobs = list(out.logprobs) if out.logprobs is not None else None
            outs.append(out)
        if finished:
            self.metrics.finished_time = time.time()
        return RequestOutput(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outs,
            finished=finished,
            num_cached_tokens=self.num_cached_tokens,
            prompt_logprobs=self.prompt_logprobs,
            metrics=self.metrics,
            error=self.error,
            accepted_prediction_tokens=self.accepted_prediction_tokens,
            rejected_prediction_tokens=self.rejected_prediction_tokens,
        )


def fan_out(
    request_id: str,
    prompt_token_ids: list[int],
    params: SamplingParams,
    *,
    metrics: RequestMetrics,
    max_tokens: int,
    lora_keys: list[str | None],
    grammar: str | None,
    cache_salt: str | None,
    priority: int,
    tokenizer: Decoder,
    eos_token_ids: tuple[int, ...],
) -> Request:
    """The Request and its params.num_samples sequences, each with its own id, seed and adapter key."""
    request = Request(request_id, list(prompt_token_ids), params, metrics)
    if params.prompt_logprobs is not None:
        request.prompt_logprobs = [None] * len(prompt_token_ids)
    count = params.num_samples
    # best_of ranks samples by cumulative logprob, so its sequences track logprobs even if not reported.
    seq_params = params
    if count > params.n and params.logprobs is None:
        seq_params = dataclasses.replace(params, logprobs=0)
    for index in range(count):
        sequence = Sequence(
            sequence_id=child_sequence_id(request_id, index, count),
            prompt_token_ids=list(prompt_token_ids),
            sampling_params=seq_params,
            arrival_time=metrics.arrival_time,
            priority=priority,
            lora_key=lora_keys[index],
            cache_salt=cache_salt,
            max_tokens=max_tokens,
            seed=None if params.seed is None else child_seed(params.seed, index),
            grammar=grammar,
        )
        request.sequences.append(
            SequenceOutputState(
                sequence=sequence,
                request_id=request_id,
                index=index,
                detokenizer=IncrementalDetokenizer(tokenizer, prompt_token_ids, params.skip_special_tokens),
                stop_checker=StopChecker(params, eos_token_ids, max_tokens),
                logprobs=[] if seq_params.logprobs is not None else None,
            )
        )
    return request
