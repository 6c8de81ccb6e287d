"""The background-thread engine as the HTTP layer uses it: concurrent streams, cancellation, queue bound."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest

from ember.engine.async_engine import AsyncEngine
from ember.engine.errors import QueueFullError
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config
from ember.models.loader import LoadedModel


def make_engine(model: LoadedModel, **scheduler: object) -> AsyncEngine:
    # these tests count steps: one token per step, so no speculative decoding
    return AsyncEngine(LLMEngine(model, tiny_engine_config(prompt_lookup="off", **scheduler)))


async def collect(
    engine: AsyncEngine, prompt: list[int], params: SamplingParams, rid: str
) -> tuple[str, str]:
    text = ""
    final = None
    async for out in engine.generate(prompt, params, rid):
        text += out.outputs[0].delta_text
        final = out
    assert final is not None and final.finished
    return text, final.outputs[0].text


def test_concurrent_streams_match_the_offline_engine(tiny_llama: LoadedModel) -> None:
    prompts = [tiny_llama.tokenizer.encode(p) for p in ("Hello there", "1 2 3 4", "The weather today")]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    offline = LLMEngine(tiny_llama, tiny_engine_config(prompt_lookup="off"))
    expected = []
    for i, prompt in enumerate(prompts):
        offline.add_request(f"o{i}", prompt, params)
        while offline.has_unfinished():
            outs = offline.step()
        expected.append(outs[-1].outputs[0].text)

    async def main() -> tuple[list[tuple[str, str]], int]:
        engine = make_engine(tiny_llama)
        await engine.start()
        try:
            # Held between steps: all three streams are queued before the first step, so they run together.
            await asyncio.to_thread(engine.pause)
            tasks = [asyncio.create_task(collect(engine, p, params, f"a{i}")) for i, p in enumerate(prompts)]
            await wait_until(lambda: engine.stats().num_waiting == len(prompts))
            assert engine.stats().num_steps == 0
            engine.resume()
            return await asyncio.gather(*tasks), engine.stats().num_steps
        finally:
            await engine.shutdown()

    results, steps = asyncio.run(main())
    assert [streamed for streamed, _ in results] == expected
    assert [final for _, final in results] == expected
    assert steps == params.max_tokens  # one step per token for all three: the streams shared every step


def test_closing_the_stream_aborts_and_frees_blocks(tiny_llama: LoadedModel) -> None:
    async def main() -> None:
        engine = make_engine(tiny_llama)
        await engine.start()
        try:
            prompt = tiny_llama.tokenizer.encode("A long story begins " * 10)
            # Held between steps: the request runs its prefill (the first token) and no further, so only the
            # abort can end it, however fast the machine.
            await asyncio.to_thread(engine.pause)
            stream = engine.generate(
                prompt, SamplingParams(max_tokens=500, temperature=1.0, ignore_eos=True), "gone"
            )
            first = asyncio.create_task(anext(stream))
            await wait_until(lambda: engine.stats().num_waiting == 1)
            engine.resume(steps=1)
            await asyncio.to_thread(engine.pause)
            assert (await first).outputs[0].token_ids  # the client disconnects after the first chunk
            bm = engine.engine.scheduler.block_manager
            assert engine.stats().num_running == 1 and bm.num_free_blocks < engine.engine.num_blocks - 1
            await stream.aclose()
            await wait_until(lambda: engine.stats().num_running == 0)  # aborted while still paused
            assert not engine.engine.has_unfinished()
            assert bm.num_free_blocks == engine.engine.num_blocks - 1
            assert engine.stats().generation_tokens_total == 1
            engine.resume()
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_one_step_wakes_the_event_loop_once_for_all_its_streams(tiny_llama: LoadedModel) -> None:
    """Streams share one event loop, so the engine thread hands each step's outputs over in one call."""
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = [tiny_llama.tokenizer.encode(f"Story number {i} begins") for i in range(4)]

    async def count_outputs(engine: AsyncEngine, prompt: list[int], rid: str) -> int:
        return len([out async for out in engine.generate(prompt, params, rid)])

    async def main() -> tuple[list[int], int, int]:
        loop = asyncio.get_running_loop()
        handoffs = 0
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal handoffs
            handoffs += threading.current_thread().name == "ember-engine"
            return call_soon_threadsafe(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        engine = make_engine(tiny_llama)
        await engine.start()
        try:
            outputs = await asyncio.gather(
                *(count_outputs(engine, p, f"s{i}") for i, p in enumerate(prompts))
            )
        finally:
            await engine.shutdown()
        return outputs, handoffs, engine.engine.stats.num_steps

    outputs, handoffs, steps = asyncio.run(main())
    assert outputs == [8] * 4  # one output per generated token, for every stream
    # Every step here samples a token for each running stream (the prompts fit one prefill): exactly one
    # wake-up per step, where one per stream and token would be 32.
    assert handoffs == steps < sum(outputs)


async def wait_until(condition: Any) -> None:
    """Polls a state of the engine; no deadline here, pytest's timeout ends a hang."""
    while not condition():
        await asyncio.sleep(0.005)


def test_a_full_queue_refuses_at_once_and_the_engine_keeps_serving(tiny_llama: LoadedModel) -> None:
    async def main() -> None:
        engine = make_engine(tiny_llama, max_waiting=2, max_num_seqs=1, max_num_batched_tokens=64)
        await engine.start()
        try:
            prompt = tiny_llama.tokenizer.encode("Hello there")
            slow = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
            tasks = [asyncio.create_task(collect(engine, prompt, slow, "q0"))]
            await wait_until(lambda: engine.stats().num_running == 1)
            # Held between two steps, q0 cannot finish, so the next two stay queued whatever the CPU's speed.
            await asyncio.to_thread(engine.pause)
            tasks += [asyncio.create_task(collect(engine, prompt, slow, f"q{i}")) for i in (1, 2)]
            await wait_until(lambda: engine.stats().num_waiting == 2)
            assert engine.stats().num_running == 1
            with pytest.raises(QueueFullError):
                async for _ in engine.generate(prompt, slow, "overflow"):
                    pass
            engine.resume()
            results = await asyncio.gather(*tasks)
            assert all(streamed == final for streamed, final in results)
            assert len({final for _, final in results}) == 1  # same prompt, greedy: the queue changed nothing
            text, final = await collect(
                engine, prompt, SamplingParams(max_tokens=3, temperature=0.0), "after"
            )
            assert text == final and text == results[0][1][: len(text)]
            assert engine.stats().num_waiting == 0 and engine.stats().num_running == 0
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_a_paused_engine_queues_and_aborts_but_generates_nothing(tiny_llama: LoadedModel) -> None:
    async def main() -> None:
        engine = make_engine(tiny_llama)
        await engine.start()
        try:
            prompt = tiny_llama.tokenizer.encode("Hold on")
            params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
            await asyncio.to_thread(engine.pause)
            task = asyncio.create_task(collect(engine, prompt, params, "held"))
            await wait_until(lambda: engine.stats().num_waiting == 1)
            gone = engine.generate(prompt, params, "gone")
            gone_first = asyncio.create_task(anext(gone))
            await wait_until(lambda: engine.stats().num_waiting == 2)
            gone_first.cancel()
            await asyncio.gather(gone_first, return_exceptions=True)
            await gone.aclose()  # leaves while queued: aborted although no step runs
            await wait_until(lambda: engine.stats().num_waiting == 1)
            assert engine.stats().generation_tokens_total == 0 and not task.done()
            engine.resume(steps=1)  # the prefill, which samples the first token, then held again
            await asyncio.to_thread(engine.pause)
            assert engine.stats().generation_tokens_total == 1 and not task.done()
            engine.resume()
            streamed, final = await task
            assert streamed == final and engine.stats().generation_tokens_total == 40
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_an_engine_call_whose_caller_left_is_skipped_and_the_engine_lives(tiny_llama: LoadedModel) -> None:
    async def main() -> None:
        engine = make_engine(tiny_llama)
        await engine.start()
        try:
            running, release, ran = threading.Event(), threading.Event(), []
            held = asyncio.create_task(
                engine.run_on_engine(lambda _: (running.set(), release.wait(30), "held"))
            )
            await asyncio.to_thread(running.wait, 30)  # the engine thread is inside the first call
            left = asyncio.create_task(engine.run_on_engine(lambda _: ran.append("left")))  # queued behind it
            await asyncio.sleep(0)
            held.cancel()  # its caller goes away while it runs: it finishes unseen
            left.cancel()  # this one's caller goes away before it starts: it never runs
            await asyncio.gather(held, left, return_exceptions=True)
            release.set()
            assert await asyncio.wait_for(engine.run_on_engine(lambda _: "after"), 30) == "after"
            assert engine.is_running and ran == []
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_a_prompt_too_long_is_a_value_error_before_anything_runs(tiny_llama: LoadedModel) -> None:
    async def main() -> None:
        engine = make_engine(tiny_llama, max_model_len=64)
        await engine.start()
        try:
            with pytest.raises(ValueError, match="context length"):
                async for _ in engine.generate(list(range(100, 200)), SamplingParams(max_tokens=4), "long"):
                    pass
            # Refused before it was queued: nothing waits, nothing ran, and its request id is not taken.
            stats = engine.stats()
            assert stats.num_waiting == stats.num_running == stats.num_steps == stats.prompt_tokens_total == 0
            params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
            text, final = await collect(engine, list(range(100, 110)), params, "long")
            assert text == final and engine.stats().prompt_tokens_total == 10
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_embeddings_are_normalised_and_input_dependent(tiny_llama: LoadedModel) -> None:
    async def main() -> list[list[float]]:
        engine = make_engine(tiny_llama)
        await engine.start()
        try:
            tok = tiny_llama.tokenizer
            output = await engine.embed(
                [tok.encode("a cat"), tok.encode("a cat"), tok.encode("quantum chromodynamics")], "e1"
            )
            assert output.finish_reason == "stop" and output.num_prompt_tokens == 8
            return output.embeddings
        finally:
            await engine.shutdown()

    a, b, c = asyncio.run(main())
    assert len(a) == tiny_llama.config.hidden_size
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-5)
    assert a == pytest.approx(b, abs=1e-6)
    assert sum(x * y for x, y in zip(a, c, strict=True)) < 0.999
