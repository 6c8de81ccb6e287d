"""Adapters served by the engine: mixed batches, prefix-cache isolation, pins, and the async registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import peft
import pytest
import torch
from lora_helpers import hf_model, random_adapter

from ember.engine.async_engine import AsyncEngine
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.outputs import RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.lora.adapter import save_peft_adapter
from ember.lora.config import LoraConfig
from ember.lora.errors import LoraError
from ember.models.loader import LoadedModel

GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny_loaded_model("llama", seed=0, vocab_size=512)


def make_engine(model: LoadedModel, **scheduler: object) -> LLMEngine:
    engine = LLMEngine(model, tiny_engine_config(**scheduler))
    engine.register_lora("one", random_adapter(model.config, "one", seed=1))
    engine.register_lora(
        "two", random_adapter(model.config, "two", seed=2, rank=2, modules=("v_proj", "up_proj"))
    )
    return engine


def run(engine: LLMEngine, jobs: list[tuple[list[int], str | None]], params: SamplingParams = GREEDY) -> list:
    """All jobs added at once, stepped to the end -> the final RequestOutput of each, in order."""
    for i, (prompt, lora) in enumerate(jobs):
        engine.add_request(f"r{i}", prompt, params, lora_id=lora)
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    return [final[f"r{i}"] for i in range(len(jobs))]


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(3, 512, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def assert_idle(engine: LLMEngine) -> None:
    bm = engine.scheduler.block_manager
    assert bm.num_free_blocks == engine.num_blocks - 1
    assert all(info.active_requests == 0 for info in engine.list_loras())


def test_mixed_batch_gives_the_same_greedy_tokens_as_each_request_alone(model: LoadedModel) -> None:
    jobs = [(prompt(40, 1), None), (prompt(7, 2), "one"), (prompt(55, 3), "two"), (prompt(12, 4), "one")]
    jobs.append((jobs[1][0], None))  # the same prompt as request 1, without its adapter
    alone = [run(make_engine(model), [job])[0].outputs[0].token_ids for job in jobs]
    # A small token budget mixes prefill chunks of some requests with decodes of others in one forward.
    engine = make_engine(model, max_num_batched_tokens=48, max_num_seqs=8)
    batched = [out.outputs[0].token_ids for out in run(engine, jobs)]
    assert batched == alone
    assert alone[1] != alone[4], "the adapter changes the greedy continuation"
    assert_idle(engine)


def test_prefix_cache_is_never_shared_between_adapters(model: LoadedModel) -> None:
    engine = make_engine(model)
    shared = prompt(50, 9)  # three full blocks of 16
    cached = {}
    for lora in [None, "one", "two", "one", None]:
        label = f"{lora}-again" if lora in cached else lora
        cached[label] = run(engine, [(shared, lora)])[0].num_cached_tokens
    assert cached == {None: 0, "one": 0, "two": 0, "one-again": 48, "None-again": 48}
    assert_idle(engine)


def test_engine_tokens_match_peft_and_transformers(model: LoadedModel, tmp_path: Path) -> None:
    """Paged KV decode with an adapter against a plain greedy loop of PEFT on transformers."""
    adapter = random_adapter(model.config, "saved", seed=3)
    save_peft_adapter(adapter, str(tmp_path), model.name)
    engine = LLMEngine(model, tiny_engine_config())
    engine.register_lora("saved", str(tmp_path))
    ids = prompt(9, 5)
    ours = run(engine, [(ids, "saved")])[0].outputs[0].token_ids

    reference = peft.PeftModel.from_pretrained(hf_model(model.config, seed=0), str(tmp_path)).eval()
    tokens = list(ids)
    with torch.no_grad():
        for _ in range(GREEDY.max_tokens):
            tokens.append(int(reference(torch.tensor([tokens])).logits[0, -1].argmax()))
    assert ours == tokens[len(ids) :]


def test_requests_pin_their_adapter_until_they_finish(model: LoadedModel) -> None:
    engine = make_engine(model)
    engine.add_request("n2", prompt(6, 1), SamplingParams(max_tokens=4, n=2, seed=1), lora_id="one")
    engine.add_request("long", prompt(6, 2), SamplingParams(max_tokens=50, ignore_eos=True), lora_id="two")
    assert {i.name: i.active_requests for i in engine.list_loras()} == {"one": 2, "two": 1}
    with pytest.raises(LoraError, match="in use by 2 running request"):
        engine.unregister_lora("one")
    for _ in range(6):
        engine.step()
    assert {i.name: i.active_requests for i in engine.list_loras()} == {"one": 0, "two": 1}
    engine.abort_request("long")
    assert_idle(engine)
    engine.unregister_lora("one")
    assert [i.name for i in engine.list_loras()] == ["two"]


def test_unknown_adapter_is_refused_and_leaves_nothing_behind(model: LoadedModel) -> None:
    engine = make_engine(model)
    with pytest.raises(ValueError, match=r"unknown LoRA adapter 'three' \(registered: one, two\)"):
        engine.add_request("x", prompt(5, 1), GREEDY, lora_id="three")
    assert not engine.has_unfinished()
    assert_idle(engine)


def test_adapters_from_the_engine_config_are_served(model: LoadedModel, tmp_path: Path) -> None:
    save_peft_adapter(random_adapter(model.config, "cfg", seed=4), str(tmp_path), model.name)
    config = EngineConfig(
        cache=tiny_engine_config().cache,
        scheduler=tiny_engine_config().scheduler,
        lora=LoraConfig(max_loaded=1, adapters=(("from-config", str(tmp_path)),)),
    )
    engine = LLMEngine(model, config)
    assert [i.name for i in engine.list_loras()] == ["from-config"]
    served = run(engine, [(prompt(5, 1), "from-config")])[0].outputs[0].token_ids
    # What the same folder gives when registered at run time, and not what the base model gives.
    by_hand = LLMEngine(model, tiny_engine_config())
    by_hand.register_lora("by-hand", str(tmp_path))
    assert served == run(by_hand, [(prompt(5, 1), "by-hand")])[0].outputs[0].token_ids
    assert served != run(by_hand, [(prompt(5, 1), None)])[0].outputs[0].token_ids
    with pytest.raises(ValueError, match="given twice"):
        LoraConfig(adapters=(("a", "/x"), ("a", "/y")))


def test_async_engine_registers_serves_and_unregisters(model: LoadedModel, tmp_path: Path) -> None:
    save_peft_adapter(random_adapter(model.config, "x", seed=6), str(tmp_path), model.name)
    ids = prompt(8, 3)
    expected = run(make_engine(model), [(ids, None)])[0].outputs[0].token_ids

    async def main() -> tuple[list[int], list[int]]:
        engine = AsyncEngine(LLMEngine(model, tiny_engine_config()))
        await engine.start()
        try:
            info = await engine.register_lora("served", str(tmp_path))
            assert info.name == "served" and info.loaded
            with pytest.raises(LoraError, match="already registered"):
                await engine.register_lora("served", str(tmp_path))
            assert [i.name for i in engine.list_loras()] == ["served"]
            outputs = {}
            for lora in (None, "served"):
                async for out in engine.generate(ids, GREEDY, f"req-{lora}", lora_id=lora):
                    outputs[lora] = out.outputs[0].token_ids
            with pytest.raises(LoraError, match="unknown LoRA adapter 'nope'"):
                async for _ in engine.generate(ids, GREEDY, "bad", lora_id="nope"):
                    pass
            await engine.unregister_lora("served")
            assert engine.list_loras() == []
            with pytest.raises(LoraError, match="unknown LoRA adapter 'served'"):
                await engine.unregister_lora("served")
            return outputs[None], outputs["served"]
        finally:
            await engine.shutdown()

    base, adapted = asyncio.run(main())
    assert base == expected
    assert adapted != base
