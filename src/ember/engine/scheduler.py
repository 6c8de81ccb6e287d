"""Continuous batching with chunked prefill, prefix caching and preemption by recompute.

Each step: running requests first (decodes, then continuing prefill chunks), then waiting ones while the
token budget, max_num_seqs and free blocks allow. A prompt longer than the budget left is prefilled in
chunks over several steps, so running decodes are never stalled. When a running request needs a block and
none is free, the worst running request (by policy: latest arrival, or lowest priority then latest arrival)
loses its KV and goes back to the waiting queue with its output tokens, to be recomputed later.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from ember.engine.block_manager import BlockManager
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.errors import QueueFullError
from ember.engine.request import Request, RequestStatus
from ember.engine.scheduler_output import ScheduledRequest, SchedulerOutput, SchedulerStats

OrderKey = tuple[float, ...]  # smaller runs first and is preempted last


class _FcfsQueue:
    """The order requests were added in; a preempted request goes back to the front."""

    def __init__(self) -> None:
        self._items: deque[Request] = deque()

    def push(self, request: Request) -> None:
        self._items.append(request)

    def push_front(self, request: Request) -> None:
        self._items.appendleft(request)

    def peek(self) -> Request:
        return self._items[0]

    def pop(self) -> Request:
        return self._items.popleft()

    def remove(self, request: Request) -> None:
        self._items.remove(request)

    def __len__(self) -> int:
        return len(self._items)


class _PriorityQueue:
    """By order key (priority, arrival, admission number); a preempted request keeps its place by key."""

    def __init__(self, key: Callable[[Request], OrderKey]) -> None:
        self._key = key
        self._heap: list[tuple[OrderKey, Request]] = []  # keys are unique, so Requests are never compared

    def push(self, request: Request) -> None:
        heapq.heappush(self._heap, (self._key(request), request))

    def push_front(self, request: Request) -> None:
        self.push(request)

    def peek(self) -> Request:
        return self._heap[0][1]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[1]

    def remove(self, request: Request) -> None:
        self._heap = [entry for entry in self._heap if entry[1] is not request]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig) -> None:
        if cache_config.num_blocks == 0:
            raise ValueError("cache_config.num_blocks is 0: size the KV cache before building the scheduler")
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.block_manager = BlockManager(
            cache_config.num_blocks, cache_config.block_size, cache_config.enable_prefix_caching
        )
        self._by_priority = scheduler_config.policy == "priority"
        self._requests: dict[str, Request] = {}
        self._admission_number: dict[str, int] = {}  # breaks ties between equal arrival times
        self._next_admission_number = 0
        self._waiting: _FcfsQueue | _PriorityQueue = (
            _PriorityQueue(self._key) if self._by_priority else _FcfsQueue()
        )
        self._running: list[Request] = []
        self._finished_ids: list[str] = []
        self._num_preemptions = 0
        self._num_prompt_tokens = 0

    # ---- requests in and out ----------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a fresh request; ValueError if it can never run, QueueFullError if the queue is at its bound."""
        config = self.scheduler_config
        if request.request_id in self._requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        if (
            request.status is not RequestStatus.WAITING
            or request.num_computed_tokens
            or request.output_token_ids
        ):
            raise ValueError(f"request {request.request_id!r} is not fresh (status {request.status.name})")
        num_prompt = request.num_prompt_tokens
        if num_prompt > config.max_model_len:
            raise ValueError(
                f"the prompt has {num_prompt} tokens, more than max_model_len {config.max_model_len}"
            )
        if num_prompt + request.max_tokens > config.max_model_len:
            raise ValueError(
                f"the prompt ({num_prompt} tokens) plus max_tokens ({request.max_tokens}) exceeds max_model_len "
                f"{config.max_model_len}"
            )
        # the last sampled token is never run, so a request holds at most prompt + max_tokens - 1 tokens of KV
        blocks_needed = self.block_manager.num_blocks_for(num_prompt + request.max_tokens - 1)
        if blocks_needed > self.block_manager.num_usable_blocks:
            raise ValueError(
                f"the request needs up to {blocks_needed} KV blocks and the whole cache has "
                f"{self.block_manager.num_usable_blocks}"
            )
        if len(self._waiting) >= config.max_waiting:
            raise QueueFullError(len(self._waiting))
        self._requests[request.request_id] = request
        self._admission_number[request.request_id] = self._next_admission_number
        self._next_admission_number += 1
        self._waiting.push(request)

    def abort_request(self, request_id: str) -> bool:
        """Free every block of a waiting or running request at once; False if it is unknown or already done."""
        request = self._requests.get(request_id)
        if request is None:
            return False
        self._remove(request, RequestStatus.FINISHED_ABORTED)
        return True

    def finish_request(self, request_id: str, status: RequestStatus) -> None:
        """Called by the engine after its stop checks (or on failure) with a FINISHED_* status."""
        if not status.is_finished:
            raise ValueError(f"finish_request needs a FINISHED_* status, got {status.name}")
        request = self._requests.get(request_id)
        if request is None:
            raise ValueError(f"request {request_id!r} is not in the scheduler")
        self._remove(request, status)

    def get_request(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    # ---- the step ---------------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's tokens; advances num_computed_tokens of every scheduled request."""
        budget = self.scheduler_config.max_num_batched_tokens
        planned: dict[str, tuple[Request, int]] = {}
        preempted: list[str] = []

        def remaining(request: Request) -> int:
            return request.num_tokens - request.num_computed_tokens

        for request in sorted(self._running, key=lambda r: (remaining(r) > 1, self._key(r))):
            num_new = min(remaining(request), budget)
            if num_new <= 0 or request.status is not RequestStatus.RUNNING:
                continue
            while not self.block_manager.allocate_slots(request, num_new):
                victim = max(self._running, key=self._key)
                if victim.request_id in planned:
                    budget += planned.pop(victim.request_id)[1]
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            else:
                planned[request.request_id] = (request, num_new)
                budget -= num_new

        # admitting while preempting would only thrash: the new request would take the freed blocks
        while not preempted and self._waiting and budget > 0:
            if len(self._running) >= self.scheduler_config.max_num_seqs:
                break
            request = self._waiting.peek()
            computed_blocks, num_cached = self.block_manager.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_cached, budget)
            if not self.block_manager.allocate_slots(request, num_new, computed_blocks):
                break
            self._waiting.pop()
            if request.status is RequestStatus.WAITING:
                request.num_cached_tokens = num_cached
                self._num_prompt_tokens += request.num_prompt_tokens
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_cached
            self._running.append(request)
            planned[request.request_id] = (request, num_new)
            budget -= num_new

        scheduled = [self._advance(request, num_new) for request, num_new in planned.values()]
        finished, self._finished_ids = self._finished_ids, []
        return SchedulerOutput(
            scheduled=scheduled,
            num_batched_tokens=self.scheduler_config.max_num_batched_tokens - budget,
            preempted_ids=preempted,
            finished_ids=finished,
        )

    # ---- state ------------------------------------------------------------------------------------------

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

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

    def _key(self, request: Request) -> OrderKey:
        admission = self._admission_number[request.request_id]
        if self._by_priority:
            return (request.priority, request.arrival_time, admission)
        return (request.arrival_time, admission)

    def _advance(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        end = start + num_new
        request.num_computed_tokens = end
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=request.all_token_ids[start:end],
            start_position=start,
            block_ids=self.block_manager.block_ids(request.request_id),
            sample=end == request.num_tokens,
            lora_id=request.lora_id,
            needs_prompt_logprobs=request.wants_prompt_logprobs and start < request.num_prompt_tokens,
        )

    def _preempt(self, request: Request) -> None:
        self._running.remove(request)
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self._num_preemptions += 1
        self._waiting.push_front(request)

    def _remove(self, request: Request, status: RequestStatus) -> None:
        if request.status is RequestStatus.RUNNING:
            self._running.remove(request)
        else:
            self._waiting.remove(request)
        # after a failed step the KV of this request's new blocks may never have been written
        self.block_manager.free(request, keep_cached=status is not RequestStatus.FINISHED_ERROR)
        request.status = status
        del self._requests[request.request_id]
        del self._admission_number[request.request_id]
        self._finished_ids.append(request.request_id)
