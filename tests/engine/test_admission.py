"""Admission is all-or-nothing (#12): a request refused anywhere in add_request (grammar matcher, adapter load,
logit_bias, prompt ids, context, a fan-out colliding half-way, a taken id) leaves no trace in the scheduler,
the runner, the block manager or the adapter pins; a request whose forward fails inside a step fails alone.
Healthy greedy streams hammered by all of them end byte-identical to a clean run, and the engine ends idle
with nothing held."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from admission_helpers import (
    GREEDY,
    HEALTHY_PROMPTS,
    BadRequest,
    PoisonedForward,
    adapter_folders,
    assert_idle_and_clean,
    bad_request_id,
    bad_requests,
    break_adapter,
    engine_config,
    footprint,
    unused_token,
)

from ember.engine.async_engine import AsyncEngine
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.errors import QueueFullError
from ember.engine.forward_isolation import forward_each_alone
from ember.engine.llm_engine import LLMEngine
from ember.engine.outputs import RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import Scheduler
from ember.engine.scheduler_output import ScheduledSequence
from ember.engine.sequence import Sequence
from ember.models.loader import LoadedModel

# Seeds at the edges of what SamplingParams accepts (64 bits, signed or not) are not failures: every seed maps into
# the generator's range, so these must run to the end.
EDGE_SEEDS = (-(2**63), 2**64 - 1)


def clean_run(model: LoadedModel) -> dict[str, list[int]]:
    engine = LLMEngine(model, engine_config())
    for request_id, text in HEALTHY_PROMPTS.items():
        engine.add_request(request_id, model.tokenizer.encode(text), GREEDY)
    finals: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for output in engine.step():
            if output.finished:
                assert isinstance(output, RequestOutput) and output.error is None
                finals[output.request_id] = output.outputs[0].token_ids
    assert_idle_and_clean(engine)
    return finals


@pytest.fixture(scope="module")
def clean(tiny_llama: LoadedModel) -> dict[str, list[int]]:
    return clean_run(tiny_llama)


def poison_for(model: LoadedModel, clean: dict[str, list[int]]) -> int:
    used = {t for ids in clean.values() for t in ids}
    used |= {t for text in HEALTHY_PROMPTS.values() for t in model.tokenizer.encode(text)}
    return unused_token(model, used)


def refuse(engine: LLMEngine, bad: BadRequest, round_number: int) -> None:
    before = footprint(engine)
    with pytest.raises(bad.error):
        engine.add_request(bad_request_id(bad, round_number), bad.prompt, bad.params, lora_id=bad.lora_id)
    assert footprint(engine) == before, f"{bad.name} left a trace"


def test_the_llm_engine_hammered_at_every_admission_stage(
    tiny_llama: LoadedModel, clean: dict[str, list[int]], tmp_path: Path
) -> None:
    engine = LLMEngine(tiny_llama, engine_config())
    paths = adapter_folders(tiny_llama, tmp_path)
    for name, path in paths.items():
        engine.register_lora(name, path)
    break_adapter(paths["broken"])
    poison = poison_for(tiny_llama, clean)
    forward = engine.runner.forward = PoisonedForward(engine.runner.forward, poison)  # type: ignore[assignment]
    for request_id, text in HEALTHY_PROMPTS.items():
        engine.add_request(request_id, tiny_llama.tokenizer.encode(text), GREEDY)
    before = footprint(engine)
    with pytest.raises(ValueError, match="already running"):  # an id that is taken
        engine.add_request("h0", [1, 2, 3], GREEDY)
    assert footprint(engine) == before
    bad = bad_requests(tiny_llama)
    finals: dict[str, RequestOutput] = {}
    step = 0
    while engine.has_unfinished():
        if step < 12:  # refusals land between every early step, while the healthy streams prefill and decode
            refuse(engine, bad[step % len(bad)], step)
        if step in (2, 7):  # requests that are admitted and must fail (or succeed) on their own
            engine.add_request(f"poisoned-{step}", [5, poison, 6, 7], GREEDY)
            for seed in EDGE_SEEDS:
                params = SamplingParams(max_tokens=6, temperature=1.0, seed=seed, ignore_eos=True)
                engine.add_request(f"seed-{step}-{seed}", [9, 10, 11], params)
        for output in engine.step():
            if output.finished:
                assert isinstance(output, RequestOutput)
                finals[output.request_id] = output
        step += 1
    assert forward.raised >= 2
    for request_id, tokens in clean.items():
        assert finals[request_id].error is None
        assert finals[request_id].outputs[0].token_ids == tokens, f"{request_id} differs from the clean run"
    for step_added in (2, 7):
        poisoned = finals[f"poisoned-{step_added}"]
        assert poisoned.error and "poisoned input" in poisoned.error
        assert poisoned.outputs[0].finish_reason == "error"
        for seed in EDGE_SEEDS:
            assert len(finals[f"seed-{step_added}-{seed}"].outputs[0].token_ids) == 6
    assert_idle_and_clean(engine)


def test_the_async_engine_hammered_at_every_admission_stage(
    tiny_llama: LoadedModel, clean: dict[str, list[int]], tmp_path: Path
) -> None:
    engine = AsyncEngine(LLMEngine(tiny_llama, engine_config()))
    inner = engine.engine
    poison = poison_for(tiny_llama, clean)
    inner.runner.forward = PoisonedForward(inner.runner.forward, poison)  # type: ignore[assignment]

    async def stream(
        request_id: str, prompt: list[int], params: SamplingParams, lora_id: str | None = None
    ) -> RequestOutput:
        final = None
        async for output in engine.generate(prompt, params, request_id, lora_id=lora_id):
            final = output
        assert final is not None
        return final

    async def refused(bad: BadRequest, round_number: int) -> None:
        with pytest.raises(bad.error):
            await stream(bad_request_id(bad, round_number), bad.prompt, bad.params, bad.lora_id)

    async def main() -> dict[str, RequestOutput]:
        await engine.start()
        try:
            paths = adapter_folders(tiny_llama, tmp_path)
            for name, path in paths.items():
                await engine.register_lora(name, path)
            break_adapter(paths["broken"])
            await asyncio.to_thread(engine.pause)
            healthy = {
                request_id: asyncio.create_task(stream(request_id, tiny_llama.tokenizer.encode(text), GREEDY))
                for request_id, text in HEALTHY_PROMPTS.items()
            }
            bad = bad_requests(tiny_llama)
            for round_number in range(3):  # each round: a few steps, then every refusal at once, and a poison
                engine.resume(steps=3)
                await asyncio.to_thread(engine.pause)
                poisoned = asyncio.create_task(stream(f"poisoned-{round_number}", [5, poison, 6], GREEDY))
                await asyncio.gather(*(refused(b, round_number) for b in bad))
                engine.resume(steps=2)
                result = await poisoned
                assert result.error and "poisoned input" in result.error
                await asyncio.to_thread(engine.pause)
            engine.resume()
            return {request_id: await task for request_id, task in healthy.items()}
        finally:
            await engine.shutdown()

    finals = asyncio.run(main())
    for request_id, tokens in clean.items():
        assert finals[request_id].error is None
        assert finals[request_id].outputs[0].token_ids == tokens, f"{request_id} differs from the clean run"
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.kv_usage) == (0, 0, 0.0)
    assert_idle_and_clean(inner)


def sequence(sequence_id: str, prompt: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(sequence_id, prompt, SamplingParams(max_tokens=max_tokens), max_tokens, arrival_time=0.0)


@pytest.mark.parametrize(
    ("second", "error"),
    [
        (sequence("a", [4, 5]), ValueError),  # an id the batch already has
        (sequence("b", [1] * 60, max_tokens=10), ValueError),  # over the context
        (sequence("b", [1] * 30, max_tokens=30), ValueError),  # more KV than the whole cache
    ],
)
def test_the_scheduler_queues_every_sequence_or_none(second: Sequence, error: type[Exception]) -> None:
    scheduler = Scheduler(
        SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=64, max_waiting=3),
        CacheConfig(block_size=4, num_blocks=12),
    )
    with pytest.raises(error):
        scheduler.add_sequences([sequence("a", [1, 2, 3]), second])
    assert scheduler.num_waiting == 0 and not scheduler.has_unfinished()
    assert scheduler.get_sequence("a") is None and not scheduler.has_finished_to_report()
    scheduler.add_sequences([sequence("a", [1, 2, 3])])
    with pytest.raises(QueueFullError):  # room for two more, not three
        scheduler.add_sequences([sequence(f"q{i}", [1, 2]) for i in range(3)])
    assert scheduler.num_waiting == 1


def scheduled(sequence_id: str, start: int, num_tokens: int, blocks: list[int]) -> ScheduledSequence:
    return ScheduledSequence(
        sequence_id, [1] * num_tokens, start, blocks, sample=True, needs_prompt_logprobs=False
    )


def test_a_forward_fault_fails_the_sequence_alone_and_whoever_read_what_it_wrote() -> None:
    # block size 4: "bad" writes positions 0-7 (blocks 1, 2) in this step; "reader" took block 1 from the prefix
    # cache in this same step, so its context is what "bad" was writing; "other" shares nothing
    items = [
        scheduled("bad", 0, 8, [1, 2]),
        scheduled("reader", 4, 3, [1, 3]),
        scheduled("other", 0, 5, [4, 5]),
    ]

    def forward_one(item: ScheduledSequence) -> torch.Tensor:
        if item.sequence_id == "bad":
            raise RuntimeError("kernel fault")
        return torch.full((item.num_tokens, 2), float(len(item.sequence_id)))  # [N, H]

    survivors, hiddens, errors = forward_each_alone(items, forward_one, block_size=4)
    assert [item.sequence_id for item in survivors] == ["other"]
    assert hiddens[0].shape == (5, 2)
    assert "kernel fault" in errors["bad"] and "failed in the same step" in errors["reader"]
