"""Continuous batching with chunked prefill, prefix caching and preemption by recompute.

Each step: running sequences first (decodes, then continuing prefill chunks), then waiting ones while the
token budget, max_num_seqs and free blocks allow. A prompt longer than the budget left is prefilled in
chunks over several steps, so running decodes are never stalled. When a running sequence needs a block and
none is free, the worst running sequence (by policy: latest arrival, or lowest priority then latest arrival)
loses its KV and goes back to the waiting queue with its output tokens, to be recomputed later.

Background sequences (priority at or above SchedulerConfig.background_priority: batch lines) wait in a queue of
their own. They start only when no other sequence waits, at most background_seq_limit of them run at once, they
come last in every step's budget, and they are preempted first: for a running sequence that needs a block, and
for a waiting live sequence that finds no row or no block free. Live traffic so keeps its latency; batch work
fills what it leaves.

An embedding input is a pooling sequence: a prompt that is prefilled in chunks under the same budget and never
samples; it is done when its last chunk has run (the engine then finishes it and its blocks are freed).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ember.engine.block_manager import BlockManager
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.errors import QueueFullError
from ember.engine.generation_budget import resolve_max_tokens
from ember.engine.scheduler_output import ScheduledSequence, SchedulerOutput, SchedulerStats
from ember.engine.sequence import Sequence, SequenceStatus
from ember.engine.speculation.policy import DraftPolicy

OrderKey = tuple[float, ...]  # smaller runs first and is preempted last


class _FcfsQueue:
    """The order sequences were added in; a preempted sequence goes back to the front."""

    def __init__(self) -> None:
        self._items: deque[Sequence] = deque()

    def push(self, sequence: Sequence) -> None:
        self._items.append(sequence)

    def push_front(self, sequence: Sequence) -> None:
        self._items.appendleft(sequence)

    def peek(self) -> Sequence:
        return self._items[0]

    def pop(self) -> Sequence:
        return self._items.popleft()

    def remove(self, sequence: Sequence) -> None:
        self._items.remove(sequence)

    def __len__(self) -> int:
        return len(self._items)


class _PriorityQueue:
    """By order key (priority, arrival, admission number); a preempted sequence keeps its place by key."""

    def __init__(self, key: Callable[[Sequence], OrderKey]) -> None:
        self._key = key
        self._heap: list[tuple[OrderKey, Sequence]] = []  # keys are unique, so Sequences are never compared

    def push(self, sequence: Sequence) -> None:
        heapq.heappush(self._heap, (self._key(sequence), sequence))

    def push_front(self, sequence: Sequence) -> None:
        self.push(sequence)

    def peek(self) -> Sequence:
        return self._heap[0][1]

    def pop(self) -> Sequence:
        return heapq.heappop(self._heap)[1]

    def remove(self, sequence: Sequence) -> None:
        self._heap = [entry for entry in self._heap if entry[1] is not sequence]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)


@dataclass
class _BackgroundShare:
    """The rows and tokens background sequences may still take in the step being planned."""

    rows: int
    tokens: int
    limited: bool  # live work is present: the share is SchedulerConfig's *_beside_live

    def take(self, num_tokens: int) -> None:
        self.rows -= 1
        self.tokens -= num_tokens


class Scheduler:
    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        draft_policy: DraftPolicy | None = None,
    ) -> None:
        if cache_config.num_blocks == 0:
            raise ValueError("cache_config.num_blocks is 0: size the KV cache before building the scheduler")
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.block_manager = BlockManager(
            cache_config.num_blocks, cache_config.block_size, cache_config.enable_prefix_caching
        )
        self._by_priority = scheduler_config.policy == "priority"
        self._sequences: dict[str, Sequence] = {}
        self._admission_number: dict[str, int] = {}  # breaks ties between equal arrival times
        self._next_admission_number = 0
        self._waiting: _FcfsQueue | _PriorityQueue = (
            _PriorityQueue(self._key) if self._by_priority else _FcfsQueue()
        )
        self._background: _FcfsQueue | _PriorityQueue = (
            _PriorityQueue(self._key) if self._by_priority else _FcfsQueue()
        )
        self._running: list[Sequence] = []
        self._finished_ids: list[str] = []
        self._num_preemptions = 0
        self._num_prompt_tokens = 0
        self._draft_policy = draft_policy
        self._drafted: dict[str, int] = {}  # sequences verifying drafts this step -> draft length

    # ---- sequences in and out ----------------------------------------------------------------------------

    def add_sequence(self, sequence: Sequence) -> None:
        """Queue a fresh sequence; ValueError if it can never run, QueueFullError if the queue is at its bound."""
        self.add_sequences([sequence])

    def add_sequences(self, sequences: list[Sequence]) -> None:
        """Queue fresh sequences all together or none of them: every check is made before the first is queued,
        so a refusal (ValueError, QueueFullError) leaves no trace. They run in the order given."""
        ids = [sequence.sequence_id for sequence in sequences]
        if len(set(ids)) != len(ids):
            raise ValueError(f"sequence ids must be distinct, got {ids}")
        for sequence in sequences:
            self._check_admissible(sequence)
        if self.num_waiting + len(sequences) > self.scheduler_config.max_waiting:
            raise QueueFullError(self.num_waiting)
        for sequence in sequences:
            self._sequences[sequence.sequence_id] = sequence
            self._admission_number[sequence.sequence_id] = self._next_admission_number
            self._next_admission_number += 1
            self._queue_of(sequence).push(sequence)

    def _check_admissible(self, sequence: Sequence) -> None:
        config = self.scheduler_config
        if sequence.sequence_id in self._sequences:
            raise ValueError(f"sequence id {sequence.sequence_id!r} is already in the engine")
        if (
            sequence.status is not SequenceStatus.WAITING
            or sequence.num_computed_tokens
            or sequence.output_token_ids
        ):
            raise ValueError(
                f"sequence {sequence.sequence_id!r} is not fresh (status {sequence.status.name})"
            )
        num_prompt = sequence.num_prompt_tokens
        if sequence.pooling:
            if sequence.max_tokens != 0 or num_prompt > config.max_model_len:
                raise ValueError(
                    f"an embedding input of {num_prompt} tokens must fit max_model_len {config.max_model_len} "
                    "and generate nothing"
                )
        else:
            # The engine resolved max_tokens with the same rule; a sequence that does not fit would never finish.
            resolve_max_tokens(num_prompt, sequence.max_tokens, config.max_model_len, behavior="error")
        blocks_needed = self.block_manager.num_blocks_for(sequence.num_kv_tokens)
        if blocks_needed > self.block_manager.num_usable_blocks:
            raise ValueError(
                f"the sequence needs up to {blocks_needed} KV blocks and the whole cache has "
                f"{self.block_manager.num_usable_blocks}"
            )

    def abort_sequence(self, sequence_id: str) -> bool:
        """Free every block of a waiting or running sequence at once; False if it is unknown or already done."""
        sequence = self._sequences.get(sequence_id)
        if sequence is None:
            return False
        self._remove(sequence, SequenceStatus.FINISHED_ABORTED)
        return True

    def finish_sequence(self, sequence_id: str, status: SequenceStatus) -> None:
        """Called by the engine after its stop checks (or on failure) with a FINISHED_* status."""
        if not status.is_finished:
            raise ValueError(f"finish_sequence needs a FINISHED_* status, got {status.name}")
        sequence = self._sequences.get(sequence_id)
        if sequence is None:
            raise ValueError(f"sequence {sequence_id!r} is not in the scheduler")
        self._remove(sequence, status)

    def get_sequence(self, sequence_id: str) -> Sequence | None:
        return self._sequences.get(sequence_id)

    # ---- the step ---------------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's tokens; advances num_computed_tokens of every scheduled sequence."""
        budget = self.scheduler_config.max_num_batched_tokens
        planned: dict[str, tuple[Sequence, int]] = {}
        preempted: list[str] = []
        added: list[Sequence] = []

        def remaining(sequence: Sequence) -> int:
            return sequence.num_tokens - sequence.num_computed_tokens

        self._settle_unverified_drafts()
        drafts: dict[str, list[int]] = {}
        policy = self._draft_policy
        speculates = policy is not None and policy.speculates(sum(remaining(r) == 1 for r in self._running))
        share = self._background_share()
        for sequence in sorted(self._running, key=lambda r: (remaining(r) > 1, self._key(r))):
            background = self._is_background(sequence)
            num_new = min(remaining(sequence), budget, share.tokens if background else budget)
            if background and share.rows <= 0:
                continue  # paused this step: it keeps its KV while live requests run
            if num_new <= 0 or sequence.status is not SequenceStatus.RUNNING:
                continue
            if background:
                share.take(num_new)
            if speculates and remaining(sequence) == 1 and not (background and share.limited):
                assert policy is not None
                draft = policy.draft(sequence, budget - 1)
                if draft and self.block_manager.allocate_slots(sequence, 1, num_lookahead_tokens=len(draft)):
                    drafts[sequence.sequence_id] = draft
                    planned[sequence.sequence_id] = (sequence, 1)
                    budget -= 1 + len(draft)
                    continue
            while not self.block_manager.allocate_slots(sequence, num_new):
                victim = max(self._running, key=self._key)
                if victim.sequence_id in planned:
                    budget += planned.pop(victim.sequence_id)[1] + len(drafts.pop(victim.sequence_id, ()))
                self._preempt(victim)
                preempted.append(victim.sequence_id)
                if victim is sequence:
                    break
            else:
                planned[sequence.sequence_id] = (sequence, num_new)
                budget -= num_new

        # admitting while preempting would only thrash: the new sequence would take the freed blocks
        thrashing = bool(preempted)
        while not thrashing and budget > 0:
            # after a background sequence made room this step, none starts again in it (it would take the room)
            sequence = self._next_to_admit(background=len(preempted) == 0)
            if sequence is None:
                break
            computed_blocks, num_cached = self.block_manager.get_computed_blocks(sequence)
            background = self._is_background(sequence)
            num_new = min(sequence.num_tokens - num_cached, budget, share.tokens if background else budget)
            if background and (share.rows <= 0 or num_new <= 0):
                break
            room = len(self._running) < self.scheduler_config.max_num_seqs
            if not (room and self.block_manager.allocate_slots(sequence, num_new, computed_blocks)):
                victim = None if self._is_background(sequence) else self._background_victim()
                if victim is None:
                    break
                # a live sequence waits for a row or blocks a background one holds: that one makes room
                if victim.sequence_id in planned:
                    budget += planned.pop(victim.sequence_id)[1] + len(drafts.pop(victim.sequence_id, ()))
                self._preempt(victim)
                preempted.append(victim.sequence_id)
                continue
            self._queue_of(sequence).pop()
            if background:
                share.take(num_new)
            if sequence.status is SequenceStatus.WAITING:
                sequence.num_cached_tokens = num_cached
                self._num_prompt_tokens += sequence.num_prompt_tokens
                added.append(sequence)
            sequence.status = SequenceStatus.RUNNING
            sequence.num_computed_tokens = num_cached
            self._running.append(sequence)
            planned[sequence.sequence_id] = (sequence, num_new)
            budget -= num_new

        scheduled = [self._advance(sequence, num_new) for sequence, num_new in planned.values()]
        for item in scheduled:
            draft = drafts.get(item.sequence_id)
            if draft:
                item.draft_token_ids = draft
                self._drafted[item.sequence_id] = len(draft)
        finished, self._finished_ids = self._finished_ids, []
        return SchedulerOutput(
            scheduled=scheduled,
            num_batched_tokens=self.scheduler_config.max_num_batched_tokens - budget,
            added=added,
            preempted_ids=preempted,
            finished_ids=finished,
        )

    def accept_draft(self, sequence_id: str, num_accepted: int) -> None:
        """After verification: the first num_accepted draft tokens (now the sequence's own, appended by the
        engine) have their KV written; the slots of the rest are rolled back and their blocks freed."""
        num_drafted = self._drafted.pop(sequence_id, None)
        sequence = self._sequences.get(sequence_id)
        if num_drafted is None or sequence is None:
            return  # finished (its blocks are freed already) or nothing drafted
        if not 0 <= num_accepted <= num_drafted:
            raise ValueError(f"sequence {sequence_id!r}: {num_accepted} of {num_drafted} drafts accepted")
        sequence.num_computed_tokens += num_accepted
        self.block_manager.trim(sequence)
        if sequence.drafter is not None:
            sequence.drafter.observe(num_drafted, num_accepted)

    def _settle_unverified_drafts(self) -> None:
        """Drafts nobody reported on (their step failed before post-processing) count as all rejected."""
        for sequence_id in list(self._drafted):
            self.accept_draft(sequence_id, 0)

    # ---- state ------------------------------------------------------------------------------------------

    def has_unfinished(self) -> bool:
        return bool(self._sequences)

    def has_finished_to_report(self) -> bool:
        """Sequences finished since the last schedule(): the next SchedulerOutput tells the runner to let go."""
        return bool(self._finished_ids)

    @property
    def max_pooling_tokens(self) -> int:
        """The longest embedding input that can ever run: the context length, and what the whole cache holds."""
        cache_tokens = self.block_manager.num_usable_blocks * self.block_manager.block_size
        return min(self.scheduler_config.max_model_len, cache_tokens)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + len(self._background)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def stats(self) -> SchedulerStats:
        cache_stats = self.block_manager.prefix_cache_stats
        return SchedulerStats(
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            num_free_blocks=self.block_manager.num_free_blocks,
            kv_usage=self.block_manager.usage,
            prefix_cache_queries=cache_stats.queries,
            prefix_cache_hits=cache_stats.hits,
            prompt_tokens_total=self._num_prompt_tokens,
            num_preemptions=self._num_preemptions,
        )

    # ---- internals --------------------------------------------------------------------------------------

    def _key(self, sequence: Sequence) -> OrderKey:
        admission = self._admission_number[sequence.sequence_id]
        if self._by_priority:
            return (sequence.priority, sequence.arrival_time, admission)
        return (float(self._is_background(sequence)), sequence.arrival_time, admission)

    def _is_background(self, sequence: Sequence) -> bool:
        return sequence.priority >= self.scheduler_config.background_priority

    def _queue_of(self, sequence: Sequence) -> _FcfsQueue | _PriorityQueue:
        return self._background if self._is_background(sequence) else self._waiting

    def _next_to_admit(self, background: bool) -> Sequence | None:
        """The head of the live queue; else a background sequence, while fewer than their limit run."""
        if self._waiting:
            return self._waiting.peek()
        if not (background and self._background):
            return None
        running = sum(self._is_background(r) for r in self._running)
        if running >= self.scheduler_config.background_seq_limit:
            return None
        return self._background.peek()

    def _background_share(self) -> _BackgroundShare:
        """What background sequences may run this step: without live work, as much as any; while a live
        sequence runs or waits, a few rows and tokens (on a CPU every extra row lengthens the step that each live
        token waits for)."""
        config = self.scheduler_config
        live = bool(self._waiting) or any(not self._is_background(r) for r in self._running)
        if not live:
            return _BackgroundShare(config.max_num_seqs, config.max_num_batched_tokens, limited=False)
        return _BackgroundShare(
            config.background_seqs_beside_live, config.background_tokens_beside_live, limited=True
        )

    def _background_victim(self) -> Sequence | None:
        """The running background sequence to preempt first (the last by order), if any runs."""
        candidates = [r for r in self._running if self._is_background(r)]
        return max(candidates, key=self._key) if candidates else None

    def _advance(self, sequence: Sequence, num_new: int) -> ScheduledSequence:
        start = sequence.num_computed_tokens
        end = start + num_new
        sequence.num_computed_tokens = end
        return ScheduledSequence(
            sequence_id=sequence.sequence_id,
            token_ids=sequence.all_token_ids[start:end],
            start_position=start,
            block_ids=self.block_manager.block_ids(sequence.sequence_id),
            sample=end == sequence.num_tokens and not sequence.pooling,
            pool=sequence.pooling,
            needs_prompt_logprobs=sequence.wants_prompt_logprobs and start < sequence.num_prompt_tokens,
        )

    def _preempt(self, sequence: Sequence) -> None:
        self._running.remove(sequence)
        self.block_manager.free(sequence)
        sequence.num_computed_tokens = 0
        sequence.status = SequenceStatus.PREEMPTED
        sequence.num_preemptions += 1
        self._num_preemptions += 1
        self._queue_of(sequence).push_front(sequence)

    def _remove(self, sequence: Sequence, status: SequenceStatus) -> None:
        if sequence.status is SequenceStatus.RUNNING:
            self._running.remove(sequence)
        else:
            self._queue_of(sequence).remove(sequence)
        # after a failed step the KV of this sequence's new blocks may never have been written
        self.block_manager.free(sequence, keep_cached=status is not SequenceStatus.FINISHED_ERROR)
        sequence.status = status
        del self._sequences[sequence.sequence_id]
        del self._admission_number[sequence.sequence_id]
        self._finished_ids.append(sequence.sequence_id)
