"""What the engine hands to its callers: per-request outputs, with the text delta since the last one, and the
vectors of an embedding request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """The log-probability of one chosen token and the top alternatives at its position."""

    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token
    top: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob), most likely first


@dataclass
class CompletionOutput:
    """One of the n sequences of a request, as of the latest engine step."""

    index: int
    text: (
        str  # all text so far; a matched stop string is excluded, text that may still become one is held back
    )
    token_ids: list[int]
    delta_text: str = ""  # text added since the previous output of this sequence
    delta_token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # one per generated token so far, when requested
    delta_logprobs: list[TokenLogprob] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    """Everything a caller needs to answer one API request; streamed once per step while it runs."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first entry None: no logprob for token 0
    metrics: RequestMetrics | None = None
    error: str | None = None  # set when the request failed inside the engine; the others keep running
    # speculative decoding, over all sequences: draft tokens kept in the output, and drafted but not kept
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


@dataclass
class EmbeddingOutput:
    """An embedding request's answer, handed out once, when it is finished."""

    request_id: str
    embeddings: list[list[float]]  # one unit-length vector per input, in input order; empty unless "stop"
    num_prompt_tokens: int  # tokens of all its inputs
    finish_reason: str  # "stop": every input pooled; "abort"; "error"
    metrics: RequestMetrics
    error: str | None = None  # set when it failed inside the engine

    @property
    def finished(self) -> bool:
        return True
