"""The engine's side of a drain's end: `AsyncEngine.end_all_requests` ends every request in flight (running or
still waiting) with the shutdown error, frees their KV blocks, and refuses requests that come later."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ember.engine.async_engine import AsyncEngine
from ember.engine.errors import EngineDeadError, ServerShuttingDownError
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config, tiny_loaded_model

pytestmark = pytest.mark.timeout(300)  # a hang guard only: the waits below poll states


async def wait_until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def read_all(engine: AsyncEngine, request_id: str, started: asyncio.Event) -> BaseException | None:
    params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    try:
        async for _ in engine.generate(engine.tokenizer.encode("Once upon a time"), params, request_id):
            started.set()
    except EngineDeadError as error:
        return error
    return None


def test_end_all_requests_ends_running_and_waiting_requests_and_frees_their_blocks() -> None:
    async def main() -> None:
        # One sequence runs at a time, so the second request is still waiting when the drain ends.
        engine = AsyncEngine(
            LLMEngine(tiny_loaded_model("llama", seed=0), tiny_engine_config(max_num_seqs=1))
        )
        await engine.start()
        try:
            await asyncio.to_thread(engine.pause)
            running_started, waiting_started = asyncio.Event(), asyncio.Event()
            running = asyncio.create_task(read_all(engine, "running", running_started))
            waiting = asyncio.create_task(read_all(engine, "waiting", waiting_started))
            await wait_until(lambda: engine.stats().num_waiting == 2)
            engine.resume(steps=3)  # the first request prefills and decodes; the engine pauses again
            await running_started.wait()
            await asyncio.to_thread(engine.pause)
            stats = engine.stats()
            assert (stats.num_running, stats.num_waiting) == (1, 1) and stats.kv_usage > 0

            error = ServerShuttingDownError(
                "the server is shutting down: the drain timeout ended this request"
            )
            assert await engine.end_all_requests(error) == 2
            for task in (running, waiting):
                ended = await task
                assert isinstance(ended, ServerShuttingDownError) and "drain timeout" in str(ended)
            assert not waiting_started.is_set()
            stats = engine.stats()
            assert (stats.num_running, stats.num_waiting, stats.kv_usage) == (0, 0, 0)
            engine.engine.check_invariants()  # paused: no step runs while the bookkeeping is read

            late = await read_all(engine, "late", asyncio.Event())
            assert isinstance(late, ServerShuttingDownError) and "drain timeout" in str(late)
            assert engine.stats().num_waiting == 0
        finally:
            engine.resume()
            await engine.shutdown()

    asyncio.run(main())
