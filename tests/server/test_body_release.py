"""A body with long lists is freed by a worker thread in slices, once nothing else holds it: never on the event
loop, and never while a holder (a streamed reply, a kept list) could still read it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict

from ember.server.common.body_release import release_off_loop
from ember.server.common.protocol import LONG_LIST_ITEMS


class Freed:
    """An item that records which thread freed it."""

    def __init__(self, log: list[str]) -> None:
        self._log = log

    def __del__(self) -> None:
        self._log.append(threading.current_thread().name)


class Body(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    messages: list[Any]
    model: str = "m"


def _body(log: list[str], items: int) -> Body:
    return Body(messages=[Freed(log) for _ in range(items)])


async def _settle(log: list[str], expected: int) -> None:
    for _ in range(200):
        if len(log) >= expected:
            return
        await asyncio.sleep(0.02)


def test_a_long_body_is_freed_off_the_event_loop_once_unheld() -> None:
    log: list[str] = []
    items = 5 * LONG_LIST_ITEMS

    async def scenario() -> tuple[str, int]:
        loop_thread = threading.current_thread().name
        body = _body(log, items)
        still_held = body  # e.g. a streamed reply still running
        release_off_loop(body)
        del body
        await asyncio.sleep(0.3)  # several polls: nothing is freed while held
        held_count = len(log)
        del still_held
        await _settle(log, items)
        return loop_thread, held_count

    loop_thread, held_count = asyncio.run(scenario())
    assert held_count == 0
    assert len(log) == items
    assert loop_thread not in set(log)  # every item was freed by a worker thread


def test_a_list_held_elsewhere_is_left_whole() -> None:
    log: list[str] = []
    items = 2 * LONG_LIST_ITEMS
    kept: list[list[Any]] = []

    async def scenario() -> None:
        body = _body(log, items)
        kept.append(body.messages)  # a result that kept the list itself
        release_off_loop(body)
        del body
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert log == [] and len(kept[0]) == items


def test_a_short_body_is_not_touched() -> None:
    log: list[str] = []

    async def scenario() -> str:
        body = _body(log, 10)
        release_off_loop(body)
        del body  # freed right here, on the loop, as any small object is
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    assert log == [loop_thread] * 10
