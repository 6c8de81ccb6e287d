"""A prepared request's life in the engine: open it (refusals become HTTP errors before any byte is sent), read
its outputs, and abort it as soon as the client goes away (watched from the end of the body on, so a client that
leaves during the preparation never gets an engine request)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from ember.engine.outputs import RequestOutput
from ember.server.common.errors import APIError, invalid_request
from ember.server.common.metrics import RequestTimer

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.server.common.preparation import EngineRequest

T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer; nobody reads it


class Generation:
    """An engine request that has been accepted; iterate `outputs()` for its per-step RequestOutputs."""

    def __init__(
        self, request: EngineRequest, first: RequestOutput, stream: AsyncIterator[RequestOutput]
    ) -> None:
        self.request = request
        self.first = first
        self._stream = stream

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        yield self.first
        if self.first.finished:
            return
        async for output in self._stream:
            yield output

    async def close(self) -> None:
        """Stops the request if it is still running (the engine frees its KV blocks)."""
        await self._stream.aclose()


async def open_generation(engine: AsyncEngine, request: EngineRequest, priority: int = 0) -> Generation:
    """Submits the request and waits for its first output; QueueFullError propagates (429)."""
    stream = engine.generate(
        request.prompt_token_ids,
        request.params,
        request.request_id,
        cache_salt=request.cache_salt,
        lora_id=request.lora_id,
        priority=priority,
    )
    try:
        first = await anext(stream)
    except ValueError as error:
        raise invalid_request(str(error), param=request.prompt_param) from None
    return Generation(request, first, stream)


async def open_generations(
    engine: AsyncEngine, requests: list[EngineRequest], priority: int = 0
) -> list[Generation]:
    """Submits all prompts at once (they prefill together); if one is refused, the others are aborted."""
    results = await asyncio.gather(
        *(open_generation(engine, r, priority) for r in requests), return_exceptions=True
    )
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is None:
        return [r for r in results if isinstance(r, Generation)]
    for result in results:
        if isinstance(result, Generation):
            await result.close()
    raise failure


async def merged_outputs(generations: list[Generation]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several generations as they come, tagged with the generation's position."""
    if len(generations) == 1:
        try:
            async for output in generations[0].outputs():
                yield 0, output
        finally:
            await generations[0].close()
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | None | BaseException]] = asyncio.Queue()

    async def pump(position: int, generation: Generation) -> None:
        try:
            async for output in generation.outputs():
                await queue.put((position, output))
        except Exception as error:  # noqa: BLE001 - re-raised in the consumer
            await queue.put((position, error))
        await queue.put((position, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        remaining = len(tasks)
        while remaining:
            position, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # a generator can only be closed once it is idle
        for generation in generations:
            await generation.close()


async def collect_finals(generations: list[Generation], timer: RequestTimer) -> list[RequestOutput]:
    """Runs every generation to its end (timing each token's arrival); the last output of each, in order."""
    finals: dict[int, RequestOutput] = {}
    async with aclosing(merged_outputs(generations)) as outputs:
        async for position, output in outputs:
            timer.mark_tokens(sum(len(seq.delta_token_ids) for seq in output.outputs))
            finals[position] = output
    return [finals[i] for i in range(len(generations))]


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read already, so the next ASGI message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientLeft(APIError):
    """The client closed its connection before the answer (HTTP 499; nobody reads it)."""

    def __init__(self) -> None:
        super().__init__(
            CLIENT_CLOSED_REQUEST, "the client closed the connection", code="client_closed_request"
        )


class EngineWatch:
    """Watches the party a request runs for, from the end of its body until close(): when it goes away (what
    `gone()` returns completes), a preparation still running is abandoned and engine requests already open are
    aborted. Its engine requests run at `priority` (lower first; live requests 0, batch lines a background one)."""

    def __init__(self, gone: Callable[[], Awaitable[Any]], engine: AsyncEngine, priority: int = 0) -> None:
        self._engine = engine
        self.priority = priority
        self._request_ids: list[str] = []
        self._task = asyncio.create_task(self._watch(gone))

    @property
    def client_left(self) -> bool:
        return self._task.done() and not self._task.cancelled()

    async def _watch(self, gone: Callable[[], Awaitable[Any]]) -> None:
        await gone()  # made only once the task runs: a watch closed at once leaves no coroutine unawaited
        for request_id in self._request_ids:
            await self._engine.abort(request_id)

    async def unless_disconnected(self, work: asyncio.Future[T]) -> T:
        """The result of `work`, unless the client leaves first: then `work` is cancelled and a 499 raised."""
        await asyncio.wait((work, self._task), return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        work.cancel()
        raise ClientLeft()

    async def open(self, requests: list[EngineRequest]) -> list[Generation]:
        """Submits the requests, aborted from now on if the client leaves; see open_generations."""
        if self.client_left:
            raise ClientLeft()
        self._request_ids = [r.request_id for r in requests]
        try:
            generations = await open_generations(self._engine, requests, self.priority)
        except BaseException:
            self.close()
            raise
        if self.client_left:  # it left while they were submitted: the watch's aborts may have come first
            for generation in generations:
                await generation.close()
            self.close()
            raise ClientLeft()
        return generations

    def close(self) -> None:
        self._task.cancel()


class DisconnectWatch(EngineWatch):
    """An HTTP request's watch: its client leaving is the disconnect."""

    def __init__(self, request: Request, engine: AsyncEngine) -> None:
        super().__init__(functools.partial(_wait_for_disconnect, request), engine)
