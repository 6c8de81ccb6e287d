"""One generated sequence, the unit the scheduler runs: its tokens, how far its KV is computed, and where it
stands. An API request (ember.engine.request.Request) with n > 1 or best_of is fanned out into several."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ember.engine.prefix_hash import BlockHash
from ember.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ember.engine.speculation.drafter import SequenceDrafter


class SequenceStatus(enum.Enum):
    WAITING = 1  # never scheduled yet
    RUNNING = 2
    PREEMPTED = 3  # back in the waiting queue; its KV was dropped and will be recomputed
    FINISHED_STOPPED = 4  # EOS, a stop token or a stop string
    FINISHED_LENGTH = 5  # max_tokens or max_model_len reached
    FINISHED_ABORTED = 6  # the client went away or cancelled
    FINISHED_ERROR = 7  # failed inside the engine

    @property
    def is_finished(self) -> bool:
        return self.value >= SequenceStatus.FINISHED_STOPPED.value

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI `finish_reason` of a finished status, None while the sequence is alive."""
        match self:
            case SequenceStatus.FINISHED_STOPPED:
                return "stop"
            case SequenceStatus.FINISHED_LENGTH:
                return "length"
            case SequenceStatus.FINISHED_ABORTED:
                return "abort"
            case SequenceStatus.FINISHED_ERROR:
                return "error"
            case _:
                return None


@dataclass(eq=False)
class Sequence:
    """One generated sequence: an API request with n > 1 (or best_of) is fanned out by the engine into several.

    The scheduler advances `num_computed_tokens` when it schedules tokens; the engine appends each sampled
    token with `append_output_token` and finishes the sequence through the scheduler. The model runner reads
    it (never writes it) from its first SchedulerOutput.added to its SchedulerOutput.finished_ids, and sets up
    its own per-sequence state from `seed`, `grammar` and `lora_key`.
    """

    sequence_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int  # resolved by ember.engine.generation_budget from sampling_params and the context left
    arrival_time: float
    priority: int = 0  # lower runs first under the "priority" policy
    lora_key: str | None = None  # the LoraManager key ("name#serial") of the adapter it runs with
    cache_salt: str | None = None  # tenants with different salts never share prefix-cache blocks
    seed: int | None = None  # this sequence's own random stream (a seeded request's samples each get one)
    grammar: str | None = None  # the compiled grammar its output must follow (structured output)
    drafter: SequenceDrafter | None = None  # proposes tokens to verify ahead (speculative decoding)
    # An embedding input: prefill only, never samples; the runner mean-pools its final hidden states chunk by
    # chunk and the sequence is done when its last prompt token is computed (max_tokens is 0).
    pooling: bool = False

    output_token_ids: list[int] = field(default_factory=list, init=False)
    num_computed_tokens: int = field(default=0, init=False)  # tokens whose KV is (being) written
    num_cached_tokens: int = field(default=0, init=False)  # prefix-cache hit when first scheduled
    num_preemptions: int = field(default=0, init=False)
    status: SequenceStatus = field(default=SequenceStatus.WAITING, init=False)
    # Chained hashes of the full blocks of all_token_ids, in order, as far as the block manager needed them
    # (it alone knows the block size). Tokens are only ever appended, so a hash once computed stays true,
    # across preemptions too: a waiting sequence is hashed once, not at every schedule().
    block_hashes: list[BlockHash] = field(default_factory=list, init=False, repr=False)
    # prompt + outputs kept as one list so the hot path never concatenates
    _all_token_ids: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.sequence_id:
            raise ValueError("sequence_id must be a non-empty string")
        if not self.prompt_token_ids:
            raise ValueError(f"sequence {self.sequence_id!r}: the prompt has no tokens")
        if any(token_id < 0 for token_id in self.prompt_token_ids):
            raise ValueError(f"sequence {self.sequence_id!r}: prompt token ids must be non-negative")
        self.prompt_token_ids = list(self.prompt_token_ids)
        self._all_token_ids = list(self.prompt_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt followed by outputs. The list is the sequence's own: read it, do not modify it."""
        return self._all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def num_kv_tokens(self) -> int:
        """The most tokens whose KV the sequence ever holds: the last sampled token is never run, and a
        pooling sequence generates nothing."""
        return self.num_prompt_tokens + max(self.max_tokens - 1, 0)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.sampling_params.prompt_logprobs is not None

    def append_output_token(self, token_id: int) -> None:
        if token_id < 0:
            raise ValueError(f"sequence {self.sequence_id!r}: token id must be non-negative, got {token_id}")
        self.output_token_ids.append(token_id)
        self._all_token_ids.append(token_id)
