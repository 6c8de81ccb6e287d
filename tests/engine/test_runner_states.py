"""The model runner's per-sequence state (random streams, grammar matchers, LoRA slots) is set up and let go of
only from what each SchedulerOutput says: added when first scheduled, kept through preemption, dropped once a
finish or an abort is reported, and nothing is left once the engine is idle."""

from __future__ import annotations

import pytest
import torch

from ember.engine.llm_engine import LLMEngine
from ember.engine.runner_states import RunnerSequence
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import Sequence
from ember.engine.testing import tiny_engine_config
from ember.lora.adapter import LoraAdapter
from ember.lora.targets import module_shapes
from ember.models.config import ModelConfig
from ember.models.loader import LoadedModel
from ember.structured.spec import StructuredSpec

TEXT = "The quick brown fox jumps over the lazy dog and keeps running through the field "


def small_adapter(config: ModelConfig) -> LoraAdapter:
    gen = torch.Generator().manual_seed(5)
    shapes = module_shapes(config)
    weights = {}
    for layer in range(config.num_layers):
        out_features, in_features = shapes["q_proj"]
        weights[(layer, "q_proj")] = (
            torch.randn(2, in_features, generator=gen) / in_features**0.5,
            torch.randn(out_features, 2, generator=gen) * 0.3,
        )
    return LoraAdapter("one", 2, 4.0, ("q_proj",), weights)


def kinds(state: RunnerSequence) -> tuple[bool, bool, bool]:
    return state.generator is not None, state.matcher is not None, state.adapter is not None


def test_runner_state_follows_the_scheduler_through_preemption_finish_and_abort(
    tiny_llama: LoadedModel,
) -> None:
    # small, and one token per step (no drafts): forces preemptions
    engine = LLMEngine(tiny_llama, tiny_engine_config(num_blocks=14, prompt_lookup="off"))
    engine.register_lora("one", small_adapter(tiny_llama.config))
    long = SamplingParams(max_tokens=30, temperature=1.0, ignore_eos=True)
    jobs = {
        "seeded": (SamplingParams(n=2, max_tokens=30, temperature=1.0, seed=3, ignore_eos=True), None),
        "choice": (SamplingParams(max_tokens=30, structured=StructuredSpec("choice", '["yes", "no"]')), None),
        "adapted": (long, "one"),
        "greedy": (SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True), None),
        "gone": (long, None),
    }
    for i, (request_id, (params, lora)) in enumerate(jobs.items()):
        prompt = tiny_llama.tokenizer.encode(f"{i}: {TEXT * 2}")  # distinct from the first block: no sharing
        engine.add_request(request_id, prompt, params, lora_id=lora)
    first_seen: dict[str, RunnerSequence] = {}
    finished_at: dict[str, int] = {}
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        if steps == 3:
            engine.abort_request("gone")
        held = engine.runner.states.sequence_ids()
        for sequence_id in held:
            state = engine.runner.states.get(sequence_id)
            assert state is not None
            # one state per sequence for its whole life: a preemption recomputes KV, it does not start over
            assert first_seen.setdefault(sequence_id, state) is state
            expected = (sequence_id.startswith("seeded"), sequence_id == "choice", sequence_id == "adapted")
            assert kinds(state) == expected, sequence_id
        for sequence_id, state in first_seen.items():
            if state.sequence.status.is_finished:
                finished_at.setdefault(sequence_id, steps)
                if steps > finished_at[sequence_id]:
                    assert sequence_id not in held, "let go of at the step after its finish"
            else:
                assert sequence_id in held, "held from its first step to its finish, preemptions included"
    assert engine.stats.num_preemptions > 0, "the small cache must have forced a preemption"
    assert set(first_seen) == {"seeded#0", "seeded#1", "choice", "adapted", "greedy", "gone"}
    assert engine.runner.num_sequences == 0, "an idle engine's runner holds no seeds, matchers or LoRA slots"
    assert all(info.active_requests == 0 for info in engine.list_loras())


def test_a_finish_is_let_go_of_at_the_next_step_and_at_once_when_the_engine_goes_idle(
    tiny_llama: LoadedModel,
) -> None:
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    prompt = tiny_llama.tokenizer.encode(TEXT)
    engine.add_request("short", prompt, SamplingParams(max_tokens=1, seed=1, ignore_eos=True))
    engine.add_request("long", prompt, SamplingParams(max_tokens=20, seed=2, ignore_eos=True))
    engine.step()  # "short" finishes here; the runner hears of it in the next SchedulerOutput
    assert engine.runner.states.get("short") is not None
    engine.step()
    assert engine.runner.states.get("short") is None and engine.runner.states.get("long") is not None
    engine.abort_request("long")  # the last request: the engine hands the runner the abort at once
    assert engine.runner.num_sequences == 0


def test_a_sequence_whose_setup_fails_fails_its_request_alone(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    set_up = engine.runner.states._set_up

    def failing_set_up(sequence: Sequence) -> RunnerSequence:
        if sequence.sequence_id == "broken":
            raise ValueError("no such grammar")
        return set_up(sequence)

    monkeypatch.setattr(engine.runner.states, "_set_up", failing_set_up)
    prompt = tiny_llama.tokenizer.encode(TEXT)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    engine.add_request("fine", prompt, params)
    engine.add_request("broken", prompt, params)
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    assert final["broken"].error == "setting up the sequence failed: no such grammar"
    assert final["broken"].outputs[0].finish_reason == "error"
    assert final["fine"].error is None and len(final["fine"].outputs[0].token_ids) == 4
    assert engine.runner.num_sequences == 0
