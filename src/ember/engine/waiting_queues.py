"""The scheduler's waiting queues: first come first served, or by an order key (priority, arrival). Plain
Python, no torch, like the scheduler."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from ember.engine.sequence import Sequence

OrderKey = tuple[float, ...]  # smaller runs first and is preempted last


class FcfsQueue:
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


class PriorityQueue:
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
