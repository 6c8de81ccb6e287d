"""A request body with long lists let go of off the event loop, a slice at a time.

A chat of 100k messages is ~500k objects. Wherever its last reference goes, freeing it is one deallocation that
keeps the GIL for ~40 ms (over 100 ms on a loaded machine), and at the end of a route that is the event loop,
answering nobody meanwhile. A route hands such a body here once it is done with it. The loop then looks every
50 ms whether anything else still holds the body (a streamed reply keeps its request until the stream ends);
when nothing does, a worker thread empties its long lists a slice at a time, letting go of the GIL between
slices.
"""

from __future__ import annotations

import asyncio
import sys
import time

from pydantic import BaseModel

from ember.server.common.protocol import LONG_LIST_ITEMS

_POLL_S = 0.05
_SLICE_ITEMS = 1000  # ~1 ms of deallocation for chat messages


def release_off_loop(body: BaseModel) -> None:
    """Called on the event loop by the route that read `body`, when it is done with it."""
    if not _long_list_fields(body):
        return  # small: freeing it where its last reference goes costs nothing worth moving
    loop = asyncio.get_running_loop()
    loop.call_later(_POLL_S, _release_when_unheld, loop, [body])


def _long_list_fields(body: BaseModel) -> list[str]:
    return [
        name
        for name, value in body.__dict__.items()
        if isinstance(value, list) and len(value) > LONG_LIST_ITEMS
    ]


def _release_when_unheld(loop: asyncio.AbstractEventLoop, holder: list[BaseModel]) -> None:
    # 2 references: the holder's, and getrefcount's own argument. Anything more is a caller still using it.
    if sys.getrefcount(holder[0]) > 2:
        loop.call_later(_POLL_S, _release_when_unheld, loop, holder)
        return
    loop.run_in_executor(None, _empty_in_slices, holder.pop())


def _empty_in_slices(body: BaseModel) -> None:
    for name in _long_list_fields(body):
        items = body.__dict__[name]
        # 3 references: the body's, `items`, and getrefcount's argument. A list held elsewhere too (a copy
        # kept by some result) is left whole: emptying it would change what its other holder sees.
        if sys.getrefcount(items) > 3:
            continue
        while items:
            del items[-_SLICE_ITEMS:]
            time.sleep(0)  # lets go of the GIL: the event loop runs between slices
