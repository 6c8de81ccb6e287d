"""Background responses (`background: true`) running in this process: each a task started once its request is
answered, polled with GET /responses/{id} and stopped by POST /responses/{id}/cancel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class BackgroundRuns:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def start(self, response_id: str, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work, name=f"ember background response {response_id}")
        self._tasks[response_id] = task
        task.add_done_callback(lambda done: self._finished(response_id, done))

    def _finished(self, response_id: str, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(response_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background response %s failed", response_id, exc_info=task.exception())

    def running(self, response_id: str) -> bool:
        return response_id in self._tasks

    async def cancel(self, response_id: str) -> bool:
        """Stops a running background response (its engine request is aborted); False when none runs."""
        task = self._tasks.get(response_id)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # it stores itself as cancelled first
        return True
