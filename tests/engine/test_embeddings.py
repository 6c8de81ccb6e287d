"""Embeddings through the scheduler (#12): each input a prefill-only sequence run in chunks under the step's token
budget beside decoding streams; chunked mean pooling equals the one-shot forward's; an embedding request holds
one window of KV at a time however many inputs it has; leaving aborts it and frees everything."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest
import torch

from ember.engine.async_engine import AsyncEngine
from ember.engine.llm_engine import LLMEngine
from ember.engine.outputs import EmbeddingOutput, RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config
from ember.models.attention_metadata import AttentionMetadata
from ember.models.loader import LoadedModel

GREEDY = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)


@torch.inference_mode()
def one_shot_embeddings(network: torch.nn.Module, token_ids: list[list[int]]) -> torch.Tensor:
    """The implementation embeddings had before they went through the scheduler (ModelRunner.embed): one forward
    over all inputs without a KV cache, mean-pooled, L2-normalised. [B, H]"""
    lens = [len(ids) for ids in token_ids]
    flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.int64)
    positions = torch.cat([torch.arange(n, dtype=torch.int64) for n in lens])
    attn = AttentionMetadata.for_prefill_without_cache(lens)
    hidden = network(flat, positions, attn, None).float()  # [T, H]
    pooled = torch.stack([chunk.mean(0) for chunk in torch.split(hidden, lens)])  # [B, H]
    return torch.nn.functional.normalize(pooled, dim=-1)


def random_inputs(model: LoadedModel, lengths: list[int], seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (n,), generator=gen).tolist() for n in lengths]


def run_to_end(engine: LLMEngine) -> dict[str, RequestOutput | EmbeddingOutput]:
    finals: dict[str, RequestOutput | EmbeddingOutput] = {}
    while engine.has_unfinished():
        for output in engine.step():
            if output.finished:
                finals[output.request_id] = output
    return finals


def assert_idle_and_clean(engine: LLMEngine) -> None:
    block_manager = engine.scheduler.block_manager
    assert (engine.scheduler.num_running, engine.scheduler.num_waiting) == (0, 0)
    assert block_manager.num_free_blocks == block_manager.num_usable_blocks
    assert engine.runner.num_sequences == 0 and len(engine.embeddings) == 0
    engine.check_invariants()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_pooling_equals_the_one_shot_forward(tiny_llama: LoadedModel, seed: int) -> None:
    # A 32-token budget cuts the long inputs into many chunks (and chunk boundaries fall anywhere in a block).
    engine = LLMEngine(tiny_llama, tiny_engine_config(max_num_batched_tokens=32, max_num_seqs=8))
    lengths = [1, 7, 31, 32, 33, 100, 257, 5]
    inputs = random_inputs(tiny_llama, lengths, seed)
    engine.add_request("beside", [1, 2, 3], GREEDY)  # decodes share the steps
    engine.add_embedding_request("e", inputs)
    output = run_to_end(engine)["e"]
    assert isinstance(output, EmbeddingOutput) and output.finish_reason == "stop"
    assert output.num_prompt_tokens == sum(lengths)
    got = torch.tensor(output.embeddings)
    expected = one_shot_embeddings(tiny_llama.network, inputs)
    assert got.shape == expected.shape == (len(lengths), tiny_llama.config.hidden_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(lengths)), atol=1e-5)
    assert_idle_and_clean(engine)


def test_a_preempted_input_is_pooled_from_scratch(tiny_llama: LoadedModel) -> None:
    """A cache so small that decoding streams preempt the embedding's inputs: the recomputed input must not count
    its first chunks twice."""
    engine = LLMEngine(
        tiny_llama, tiny_engine_config(num_blocks=14, max_num_batched_tokens=32, max_num_seqs=8)
    )
    inputs = random_inputs(tiny_llama, [60, 90, 45], seed=7)
    for i in range(3):
        engine.add_request(
            f"s{i}", [10 + i] * 20, SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
        )
    engine.add_embedding_request("e", inputs)
    output = run_to_end(engine)["e"]
    assert engine.stats.num_preemptions > 0, "the small cache must have forced a preemption"
    assert isinstance(output, EmbeddingOutput) and output.finish_reason == "stop"
    torch.testing.assert_close(
        torch.tensor(output.embeddings), one_shot_embeddings(tiny_llama.network, inputs), rtol=0, atol=2e-5
    )
    assert_idle_and_clean(engine)


def test_embedding_inputs_neither_use_nor_fill_the_prefix_cache(tiny_llama: LoadedModel) -> None:
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    text = random_inputs(tiny_llama, [100], seed=3)[0]
    engine.add_embedding_request("first", [text])
    run_to_end(engine)
    engine.add_embedding_request("again", [text, text])
    finals = run_to_end(engine)
    again = finals["again"]
    assert isinstance(again, EmbeddingOutput)
    assert again.embeddings[0] == pytest.approx(again.embeddings[1], abs=1e-6)
    stats = engine.scheduler.stats()
    assert stats.prefix_cache_queries == 0 and stats.prefix_cache_hits == 0
    block_manager = engine.scheduler.block_manager
    assert not any(block_manager.is_cached(b) for b in range(1, block_manager.num_blocks))
    assert_idle_and_clean(engine)


def test_many_inputs_hold_one_window_of_kv_at_a_time(tiny_llama: LoadedModel) -> None:
    budget = 64
    engine = LLMEngine(tiny_llama, tiny_engine_config(max_num_batched_tokens=budget, max_num_seqs=8))
    inputs = random_inputs(tiny_llama, [40] * 50, seed=4)  # 2000 tokens, 31x the budget
    engine.add_embedding_request("many", inputs)
    block_manager = engine.scheduler.block_manager
    most_blocks = 0
    steps = 0
    finals: dict[str, RequestOutput | EmbeddingOutput] = {}
    while engine.has_unfinished():
        assert engine.embeddings.in_flight_tokens("many") <= budget
        for output in engine.step():
            finals[output.request_id] = output
        steps += 1
        most_blocks = max(most_blocks, block_manager.num_usable_blocks - block_manager.num_free_blocks)
    # one window: at most a budget's worth of tokens, each input's tail rounding up to a whole block
    assert most_blocks <= budget // block_manager.block_size + budget // 40 + 1
    assert steps >= 2000 // budget
    output = finals["many"]
    assert isinstance(output, EmbeddingOutput) and len(output.embeddings) == 50
    assert_idle_and_clean(engine)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "at least one input"),
        ([[1, 2], []], "input 1 is empty"),
        ([[1] * 1025], "at most 1024"),
        ([[1, 49152]], r"token ids must be in \[0, 49152\)"),
    ],
)
def test_a_refused_embedding_leaves_nothing(
    tiny_llama: LoadedModel, inputs: list[list[int]], message: str
) -> None:
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    with pytest.raises(ValueError, match=message):
        engine.add_embedding_request("bad", inputs)
    assert not engine.has_unfinished()
    assert_idle_and_clean(engine)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120  # a hang guard only
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_stream_keeps_decoding_while_a_big_embedding_runs(tiny_llama: LoadedModel) -> None:
    budget = 64
    # one token per step (no speculative drafts), so the stream is still decoding while the embedding runs
    config = tiny_engine_config(max_num_batched_tokens=budget, prompt_lookup="off")
    engine = AsyncEngine(LLMEngine(tiny_llama, config))
    inputs = random_inputs(tiny_llama, [1000] * 4, seed=5)  # 4000 tokens: at least 62 steps of prefill

    def generated() -> int:
        """The stream's tokens so far, read on the engine's side while it is paused."""
        return engine.engine.requests["stream"].sequences[0].sequence.num_output_tokens

    async def stream() -> list[int]:
        tokens: list[int] = []
        async for output in engine.generate([1, 2, 3], GREEDY, "stream"):
            tokens.extend(output.outputs[0].delta_token_ids)
        return tokens

    async def main() -> tuple[list[int], EmbeddingOutput]:
        await engine.start()
        try:
            await asyncio.to_thread(engine.pause)
            streaming = asyncio.create_task(stream())
            await asyncio.to_thread(
                wait_until, lambda: "stream" in engine.engine.requests, "the stream queued"
            )
            engine.resume(steps=1)  # its prefill and first token, before the embedding arrives
            await asyncio.to_thread(engine.pause)
            assert generated() == 1
            embedding = asyncio.create_task(engine.embed(inputs, "big"))
            await asyncio.to_thread(
                wait_until, lambda: "big" in engine.engine.embeddings, "the embedding queued"
            )
            steps_before = engine.stats().num_steps
            engine.resume(steps=20)
            await asyncio.to_thread(engine.pause)
            assert engine.stats().num_steps == steps_before + 20
            assert not embedding.done() and "big" in engine.engine.embeddings, (
                "the embedding is still running"
            )
            assert engine.engine.embeddings.in_flight_tokens("big") > 0
            assert generated() == 21, "the stream got a token at every one of those 20 steps"
            engine.resume()
            return await streaming, await embedding
        finally:
            await engine.shutdown()

    tokens, output = asyncio.run(main())
    assert output.finish_reason == "stop" and len(output.embeddings) == 4
    assert len(tokens) == GREEDY.max_tokens
    assert_idle_and_clean(engine.engine)


def test_leaving_aborts_the_embedding_and_frees_everything(tiny_llama: LoadedModel) -> None:
    engine = AsyncEngine(LLMEngine(tiny_llama, tiny_engine_config(max_num_batched_tokens=64)))
    inputs = random_inputs(tiny_llama, [1000] * 8, seed=6)
    block_manager = engine.engine.scheduler.block_manager

    async def main() -> None:
        await engine.start()
        try:
            await asyncio.to_thread(engine.pause)
            embedding = asyncio.create_task(engine.embed(inputs, "leaving"))
            await asyncio.to_thread(
                wait_until, lambda: "leaving" in engine.engine.embeddings, "the embedding queued"
            )
            engine.resume(steps=3)
            await asyncio.to_thread(engine.pause)
            assert block_manager.num_free_blocks < block_manager.num_usable_blocks, "it holds KV mid-prefill"
            embedding.cancel()  # the client went away
            with pytest.raises(asyncio.CancelledError):
                await embedding
            # still paused: the abort is handled between steps, no step needed
            await asyncio.to_thread(
                wait_until, lambda: not engine.engine.has_unfinished(), "the embedding to be aborted"
            )
            steps = engine.stats().num_steps
            assert block_manager.num_free_blocks == block_manager.num_usable_blocks
            engine.resume()
            assert engine.stats().num_steps == steps
        finally:
            await engine.shutdown()

    asyncio.run(main())
    assert_idle_and_clean(engine.engine)


def test_embeddings_are_unit_length_and_follow_the_input(tiny_llama: LoadedModel) -> None:
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    tok = tiny_llama.tokenizer
    engine.add_embedding_request(
        "e", [tok.encode("a cat"), tok.encode("a cat"), tok.encode("quantum physics")]
    )
    output = run_to_end(engine)["e"]
    assert isinstance(output, EmbeddingOutput)
    a, b, c = output.embeddings
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-5)
    assert a == pytest.approx(b, abs=1e-6)
    assert sum(x * y for x, y in zip(a, c, strict=True)) < 0.999
