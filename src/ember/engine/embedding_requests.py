"""Embedding requests in the engine: each input is a pooling Sequence (prefill only, never samples) that the
scheduler runs in chunks under the same token budget as prompts, beside the decodes of running streams.

An embedding request hands its inputs to the scheduler a window at a time (at most one step's token budget and
max_num_seqs sequences in flight, always at least one input), so the KV blocks it holds stay bounded however
many inputs it has, and a new chat request queues between its inputs instead of behind all of them. An input is
finished (its blocks freed) in the step its last chunk runs; the request answers once, with every vector, when
its last input is pooled. Aborting it (the client left) or a failure of any input ends all of it at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ember.engine.admission import ids_outside
from ember.engine.errors import QueueFullError
from ember.engine.model_runner import ModelRunnerOutput
from ember.engine.outputs import EmbeddingOutput, RequestMetrics
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import Scheduler
from ember.engine.sequence import Sequence, SequenceStatus


@dataclass
class EmbeddingRequest:
    """One caller's inputs, the vectors pooled so far, and which inputs the scheduler holds now."""

    request_id: str
    inputs: list[list[int]]
    priority: int
    metrics: RequestMetrics
    vectors: list[list[float] | None] = field(init=False)
    next_input: int = 0  # inputs before this one have been handed to the scheduler
    in_flight: dict[str, int] = field(default_factory=dict)  # sequence id -> input index

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.inputs)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.inputs)

    @property
    def in_flight_tokens(self) -> int:
        return sum(len(self.inputs[index]) for index in self.in_flight.values())

    @property
    def done(self) -> bool:
        return self.next_input == len(self.inputs) and not self.in_flight

    def sequence_id(self, index: int) -> str:
        return f"{self.request_id}#embed{index}"


class EmbeddingRequests:
    """The engine's embedding requests: admitted all-or-nothing, fed to the scheduler window by window."""

    def __init__(self, scheduler: Scheduler, vocab_size: int) -> None:
        self.scheduler = scheduler
        self.vocab_size = vocab_size
        config = scheduler.scheduler_config
        self.max_in_flight_tokens = config.max_num_batched_tokens
        self.max_in_flight_sequences = config.max_num_seqs
        self._requests: dict[str, EmbeddingRequest] = {}
        self._by_sequence: dict[str, EmbeddingRequest] = {}

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._requests

    def __len__(self) -> int:
        return len(self._requests)

    def request_ids(self) -> list[str]:
        return list(self._requests)

    @property
    def num_sequences(self) -> int:
        """Inputs the scheduler holds for embedding requests now."""
        return len(self._by_sequence)

    def in_flight_tokens(self, request_id: str) -> int:
        """Tokens of the request's inputs the scheduler holds now: what bounds its KV blocks."""
        return self._requests[request_id].in_flight_tokens

    # ---- in -------------------------------------------------------------------------------------------

    def add(
        self, request_id: str, inputs: list[list[int]], priority: int = 0, arrival_time: float | None = None
    ) -> None:
        """ValueError for an input that can never run, QueueFullError when the waiting queue has no room; either
        way nothing is left behind. Every input is checked here, not when its turn comes."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        if not inputs:
            raise ValueError("an embedding request needs at least one input")
        longest = self.scheduler.max_pooling_tokens
        for i, ids in enumerate(inputs):
            if not ids:
                raise ValueError(f"embedding input {i} is empty; at least one token is needed")
            if len(ids) > longest:
                raise ValueError(
                    f"embedding input {i} has {len(ids)} tokens; at most {longest} fit (the context length)"
                )
            if ids_outside(ids, self.vocab_size):
                raise ValueError(f"embedding input {i}: token ids must be in [0, {self.vocab_size})")
        request = EmbeddingRequest(
            request_id,
            [list(ids) for ids in inputs],
            priority,
            RequestMetrics(arrival_time=arrival_time if arrival_time is not None else time.time()),
        )
        if not self._feed(request):
            raise QueueFullError(self.scheduler.num_waiting)
        self._requests[request_id] = request

    def feed(self) -> list[EmbeddingOutput]:
        """Hand each request's next inputs to the scheduler, as far as its window and the queue allow. A request
        whose next input is refused (its id taken by another request's sequence) fails; returns those."""
        failed: list[EmbeddingOutput] = []
        for request in list(self._requests.values()):
            try:
                self._feed(request)
            except (ValueError, QueueFullError) as exc:
                failed.append(self._end(request, "error", f"an embedding input could not be queued: {exc}"))
        return failed

    def _feed(self, request: EmbeddingRequest) -> bool:
        """Admit the next window of inputs (all of it or none); False when none could be admitted."""
        config = self.scheduler.scheduler_config
        room = config.max_waiting - self.scheduler.num_waiting
        tokens = request.in_flight_tokens
        window: list[Sequence] = []
        while request.next_input + len(window) < len(request.inputs) and len(window) < room:
            index = request.next_input + len(window)
            size = len(request.inputs[index])
            in_flight = len(request.in_flight) + len(window)
            if in_flight and (
                tokens + size > self.max_in_flight_tokens or in_flight >= self.max_in_flight_sequences
            ):
                break
            window.append(self._sequence(request, index))
            tokens += size
        if not window:
            return False
        self.scheduler.add_sequences(window)
        for sequence in window:
            request.in_flight[sequence.sequence_id] = request.next_input
            self._by_sequence[sequence.sequence_id] = request
            request.next_input += 1
        return True

    def _sequence(self, request: EmbeddingRequest, index: int) -> Sequence:
        return Sequence(
            sequence_id=request.sequence_id(index),
            prompt_token_ids=request.inputs[index],
            sampling_params=SamplingParams(max_tokens=1, temperature=0.0),  # never used: it never samples
            max_tokens=0,
            arrival_time=request.metrics.arrival_time,
            priority=request.priority,
            pooling=True,
        )

    # ---- a step's results -----------------------------------------------------------------------------

    def on_step(self, result: ModelRunnerOutput) -> list[EmbeddingOutput]:
        """Store the vectors pooled this step and free those inputs; fail a request whose input failed.
        Returns the requests that finished."""
        outputs: list[EmbeddingOutput] = []
        for sequence_id, message in result.errors.items():
            request = self._by_sequence.get(sequence_id)
            if request is not None and request.request_id in self._requests:
                outputs.append(self._end(request, "error", message))
        for sequence_id, vector in result.pooled.items():
            request = self._by_sequence.pop(sequence_id, None)
            if request is None:
                continue
            index = request.in_flight.pop(sequence_id)
            request.vectors[index] = vector
            self.scheduler.finish_sequence(sequence_id, SequenceStatus.FINISHED_STOPPED)
            if request.done:
                outputs.append(self._end(request, "stop", None))
        return outputs

    # ---- out ------------------------------------------------------------------------------------------

    def abort(self, request_id: str) -> EmbeddingOutput | None:
        request = self._requests.get(request_id)
        return None if request is None else self._end(request, "abort", None)

    def fail(self, request_id: str, message: str) -> EmbeddingOutput | None:
        request = self._requests.get(request_id)
        return None if request is None else self._end(request, "error", message)

    def _end(self, request: EmbeddingRequest, reason: str, error: str | None) -> EmbeddingOutput:
        """The request leaves: inputs still in the scheduler are finished there (their blocks freed now, the
        runner told at the next step)."""
        status = SequenceStatus.FINISHED_ERROR if reason == "error" else SequenceStatus.FINISHED_ABORTED
        for sequence_id in request.in_flight:
            self._by_sequence.pop(sequence_id, None)
            if self.scheduler.get_sequence(sequence_id) is not None:
                self.scheduler.finish_sequence(sequence_id, status)
        request.in_flight.clear()
        del self._requests[request.request_id]
        request.metrics.finished_time = time.time()
        vectors = [v for v in request.vectors if v is not None] if reason == "stop" else []
        return EmbeddingOutput(
            request_id=request.request_id,
            embeddings=vectors,
            num_prompt_tokens=request.num_prompt_tokens,
            finish_reason=reason,
            metrics=request.metrics,
            error=error,
        )
