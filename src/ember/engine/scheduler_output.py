"""What the scheduler decides for one engine step: the dataclasses handed to the model runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.engine.sequence import Sequence


@dataclass
class ScheduledSequence:
    """The tokens one sequence runs this step and where its KV lives."""

    sequence_id: str
    token_ids: list[int]  # the tokens to run: positions start_position .. start_position + len - 1
    start_position: int  # tokens already computed before this step
    block_ids: list[int]  # the whole block table, covering start_position + len(token_ids) tokens
    sample: bool  # every known token is computed after this step: sample the next one (False mid-prefill)
    # the chunk covers prompt positions of a sequence that asked for prompt logprobs; after a preemption the
    # prompt is recomputed, so positions already answered may come again (start_position says which)
    needs_prompt_logprobs: bool
    # speculative decoding: tokens to verify after token_ids (a decode of one token); they run in the same
    # forward at the following positions, and their slots are covered by block_ids
    draft_token_ids: list[int] = field(default_factory=list)
    # an embedding input's chunk: its final hidden states are added to the sequence's pooled sum; the chunk
    # that reaches the end of the prompt completes the embedding (such a sequence never samples)
    pool: bool = False

    @property
    def num_tokens(self) -> int:
        """Tokens this sequence runs in the forward: its own and its draft."""
        return len(self.token_ids) + len(self.draft_token_ids)


@dataclass
class SchedulerOutput:
    """The one channel from the scheduler to the model runner: what runs this step, and which sequences the
    runner sets up (added) or lets go of (finished_ids) first."""

    scheduled: list[ScheduledSequence]  # running ones first (decodes, then prefill chunks), then new ones
    num_batched_tokens: int
    added: list[Sequence] = field(default_factory=list)  # scheduled for the first time (also in `scheduled`)
    preempted_ids: list[str] = field(default_factory=list)  # lost their KV this step; back in the queue
    finished_ids: list[str] = field(default_factory=list)  # finished or aborted since the previous step


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot for metrics and logs."""

    num_running: int
    num_waiting: int
    num_free_blocks: int
    kv_usage: float  # 0..1 of the usable blocks held by sequences
    prefix_cache_queries: (
        int  # tokens looked up at admissions (a resumed sequence looks up again), since start-up
    )
    prefix_cache_hits: int  # of which found in the cache
    prompt_tokens_total: int  # prompt tokens of every sequence started, cached ones included, since start-up
    num_preemptions: int  # since start-up
