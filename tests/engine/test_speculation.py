"""Speculative decoding end to end on a tiny random model: output identical to plain decoding (greedy, and seeded
sampling), stops, max_tokens, logprobs, grammars and LoRA with drafts, distribution-preserving verification,
KV blocks all given back, and the counters."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ember.engine.llm_engine import LLMEngine
from ember.engine.outputs import RequestOutput
from ember.engine.runner_states import RunnerSequence
from ember.engine.sampler import Sampler
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import Sequence
from ember.engine.speculation.config import SpeculationConfig, SpeculationParams
from ember.engine.speculation.verify import DraftRows, verify_drafts
from ember.engine.testing import tiny_engine_config
from ember.lora.adapter import LoraAdapter
from ember.models.loader import LoadedModel
from ember.structured.spec import StructuredSpec

PROMPTS = [
    [300 + i % 17 for i in range(60)],  # repetitive: prompt lookup finds matches
    list(range(1000, 1040)),
    [5, 9, 5, 9, 5, 9, 11, 12, 5, 9, 5],
    list(range(2000, 2100, 3)),
]


def _engine(model: LoadedModel, lookup: str = "on", **speculation: object) -> LLMEngine:
    config = dataclasses.replace(
        tiny_engine_config(num_blocks=128, block_size=4),
        speculation=SpeculationConfig(prompt_lookup=lookup, **speculation),  # type: ignore[arg-type]
        debug_invariants=True,
    )
    return LLMEngine(model, config)


def _run(
    engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]], **kwargs: object
) -> list[RequestOutput]:
    for i, (prompt, params) in enumerate(requests):
        engine.add_request(f"r{i}", prompt, params, **kwargs)  # type: ignore[arg-type]
    finished: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    engine.check_invariants()  # idle: every KV block, sequence and runner state given back
    assert engine.scheduler.block_manager.num_free_blocks == engine.scheduler.block_manager.num_usable_blocks
    return [finished[f"r{i}"] for i in range(len(requests))]


def _perturbed(tokens: list[int]) -> tuple[int, ...]:
    """A prediction close to the output: one token changed, two dropped, one inserted."""
    changed = list(tokens)
    if len(changed) > 12:
        changed[4] = 7
        del changed[9:11]
        changed.insert(12, 8)
    return tuple(changed)


def _with_prediction(params: SamplingParams, prediction: tuple[int, ...]) -> SamplingParams:
    return dataclasses.replace(params, speculation=SpeculationParams(prediction_token_ids=prediction))


@pytest.mark.parametrize("max_tokens", [1, 7, 40])
def test_greedy_output_is_identical_with_and_without_speculation(
    tiny_llama: LoadedModel, max_tokens: int
) -> None:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    plain = _run(_engine(tiny_llama, "off"), [(p, params) for p in PROMPTS])
    expected = [out.outputs[0].token_ids for out in plain]
    lookup_engine = _engine(tiny_llama, "on")
    lookup = _run(lookup_engine, [(p, params) for p in PROMPTS])
    assert [out.outputs[0].token_ids for out in lookup] == expected
    predicted_engine = _engine(tiny_llama, "on")  # 'on': every step drafts, whole length, no pauses
    predicted = _run(
        predicted_engine,
        [
            (p, _with_prediction(params, _perturbed(tokens)))
            for p, tokens in zip(PROMPTS, expected, strict=True)
        ],
    )
    assert [out.outputs[0].token_ids for out in predicted] == expected
    if max_tokens == 40:
        assert all(out.accepted_prediction_tokens > 20 for out in predicted)
        assert sum(out.rejected_prediction_tokens for out in predicted) > 0
        stats = predicted_engine.stats
        assert stats.spec_decode_num_accepted_tokens == sum(
            out.accepted_prediction_tokens for out in predicted
        )
        assert stats.spec_decode_num_drafts > 0
        assert stats.spec_decode_accepted_per_pos[0] >= stats.spec_decode_accepted_per_pos[-1]
        assert stats.generation_tokens_total == 40 * len(PROMPTS)
        assert stats.num_steps < plain_steps_upper_bound(max_tokens)
    if max_tokens == 1:  # nothing may be drafted: the one token is the verification's own
        assert all(out.accepted_prediction_tokens == 0 for out in predicted)


def plain_steps_upper_bound(max_tokens: int) -> int:
    return max_tokens + len(PROMPTS)  # a plain run needs at least max_tokens steps after the prefills


def test_seeded_sampling_is_the_same_with_and_without_drafts(tiny_llama: LoadedModel) -> None:
    params = SamplingParams(max_tokens=30, temperature=0.9, top_p=0.95, seed=11, n=2, ignore_eos=True)
    plain = _run(_engine(tiny_llama, "off"), [(p, params) for p in PROMPTS[:2]])
    expected = [[choice.token_ids for choice in out.outputs] for out in plain]
    predicted = _run(
        _engine(tiny_llama, "on"),
        [
            (p, _with_prediction(params, _perturbed(out[0])))
            for p, out in zip(PROMPTS, expected, strict=False)
        ],
    )
    assert [[choice.token_ids for choice in out.outputs] for out in predicted] == expected
    assert predicted[0].accepted_prediction_tokens > 10


def test_penalties_and_min_tokens_see_the_drafts_as_output(tiny_llama: LoadedModel) -> None:
    params = SamplingParams(
        max_tokens=30, temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5, min_tokens=20
    )
    plain = _run(_engine(tiny_llama, "off"), [(p, params) for p in PROMPTS])
    expected = [out.outputs[0].token_ids for out in plain]
    predicted = _run(
        _engine(tiny_llama, "on"),
        [(p, _with_prediction(params, tuple(tokens))) for p, tokens in zip(PROMPTS, expected, strict=True)],
    )
    assert [out.outputs[0].token_ids for out in predicted] == expected
    assert all(out.rejected_prediction_tokens == 0 for out in predicted)  # the exact output as prediction


def test_stop_strings_and_stop_tokens_end_a_run_of_accepted_drafts(tiny_llama: LoadedModel) -> None:
    base = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    (plain,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[1], base)])
    tokens = plain.outputs[0].token_ids
    tokenizer = tiny_llama.tokenizer
    stop_text = tokenizer.decode(tokens[15:17])
    for params in (
        dataclasses.replace(base, stop=[stop_text]),
        dataclasses.replace(base, stop_token_ids=[tokens[12]]),
    ):
        (expected,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[1], params)])
        (got,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[1], _with_prediction(params, tuple(tokens)))])
        assert got.outputs[0].token_ids == expected.outputs[0].token_ids
        assert got.outputs[0].text == expected.outputs[0].text
        assert (got.outputs[0].finish_reason, got.outputs[0].stop_reason) == (
            "stop",
            expected.outputs[0].stop_reason,
        )
        assert len(got.outputs[0].token_ids) < 20


def test_max_tokens_is_never_overshot_and_logprobs_come_per_token(tiny_llama: LoadedModel) -> None:
    params = SamplingParams(max_tokens=13, temperature=0.0, ignore_eos=True, logprobs=2)
    (plain,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[0], params)])
    prediction = tuple(plain.outputs[0].token_ids) + (1, 2, 3, 4, 5)
    (got,) = _run(_engine(tiny_llama, "on"), [(PROMPTS[0], _with_prediction(params, prediction))])
    output = got.outputs[0]
    assert output.token_ids == plain.outputs[0].token_ids
    assert output.finish_reason == "length" and len(output.token_ids) == 13
    assert output.logprobs is not None and len(output.logprobs) == 13
    for mine, theirs in zip(output.logprobs, plain.outputs[0].logprobs or [], strict=True):
        assert mine.token_id == theirs.token_id and mine.rank == theirs.rank
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
        assert [t for t, _ in mine.top] == [t for t, _ in theirs.top]
    # token 1 comes from the prefill; then 8 drafts (k) and a token of its own, then 2 drafts (all that fit
    # before max_tokens) and the 13th token
    assert got.accepted_prediction_tokens == 10


def test_a_grammar_cuts_the_draft_at_the_first_token_it_rejects(tiny_llama: LoadedModel) -> None:
    params = SamplingParams(
        max_tokens=30, temperature=0.0, structured=StructuredSpec(kind="regex", source="(ab|cd)+x")
    )
    (plain,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[1], params)])
    tokens = list(plain.outputs[0].token_ids)
    wrong = tiny_llama.tokenizer.encode("zz")
    prediction = tuple(tokens[:3] + wrong + tokens[3:])
    engine = _engine(tiny_llama, "off")
    (got,) = _run(engine, [(PROMPTS[1], _with_prediction(params, prediction))])
    assert got.outputs[0].token_ids == tokens
    assert got.outputs[0].text == plain.outputs[0].text
    assert got.outputs[0].finish_reason == plain.outputs[0].finish_reason
    assert got.accepted_prediction_tokens > 0
    # an end-of-sequence token inside the draft (here where the grammar may end) is not walked through: the
    # matcher cannot roll back over it, and it ends the run anyway
    open_ended = dataclasses.replace(
        params, max_tokens=12, structured=StructuredSpec(kind="regex", source="(ab|cd)+")
    )
    (plain,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[1], open_ended)])
    tokens = list(plain.outputs[0].token_ids)
    eos = tiny_llama.config.eos_token_ids[0]
    for cut in range(1, len(tokens)):
        with_eos = tuple(tokens[:cut] + [eos] + tokens[cut:])
        (again,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[1], _with_prediction(open_ended, with_eos))])
        assert again.outputs[0].token_ids == tokens


def test_a_draft_that_completes_the_grammar_ends_the_output_there_even_below_min_tokens(
    tiny_llama: LoadedModel,
) -> None:
    # After a completing token a plain decode samples nothing more; a verification row there allowed only EOS,
    # which min_tokens bans, and the whole step failed ("every token is masked"; a 500 in the stream).
    choice = StructuredSpec(kind="choice", source=json.dumps(["abcabc", "xyz"]))
    for min_tokens, temperature in ((0, 0.0), (5, 0.0), (20, 1.0)):
        params = SamplingParams(
            max_tokens=30, temperature=temperature, seed=3, min_tokens=min_tokens, structured=choice
        )
        (plain,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[0], params)])
        tokens = tuple(plain.outputs[0].token_ids)
        assert plain.outputs[0].text in ("abcabc", "xyz")
        for prediction in (tokens, tokens * 3, tokens[:-1], tuple(tiny_llama.tokenizer.encode("abcabcxyz"))):
            (got,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[0], _with_prediction(params, prediction))])
            assert got.outputs[0].token_ids == list(tokens)
            assert got.outputs[0].finish_reason == "stop"


def _adapter(model: LoadedModel) -> LoraAdapter:
    config = model.config
    gen = torch.Generator().manual_seed(5)
    q_out = config.num_heads * config.head_dim
    weights = {
        (layer, "q_proj"): (
            torch.randn(4, config.hidden_size, generator=gen) / config.hidden_size**0.5,
            torch.randn(q_out, 4, generator=gen),
        )
        for layer in range(config.num_layers)
    }
    return LoraAdapter("spec", 4, 8.0, ("q_proj",), weights)


def test_lora_rows_verify_their_drafts_with_the_adapter(tiny_llama: LoadedModel) -> None:
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    plain_engine = _engine(tiny_llama, "off")
    plain_engine.register_lora("spec", _adapter(tiny_llama))
    (plain,) = _run(plain_engine, [(PROMPTS[2], params)], lora_id="spec")
    (base,) = _run(_engine(tiny_llama, "off"), [(PROMPTS[2], params)])
    assert plain.outputs[0].token_ids != base.outputs[0].token_ids  # the adapter changes the output
    engine = _engine(tiny_llama, "off")
    engine.register_lora("spec", _adapter(tiny_llama))
    prediction = _perturbed(plain.outputs[0].token_ids)
    (got,) = _run(engine, [(PROMPTS[2], _with_prediction(params, prediction))], lora_id="spec")
    assert got.outputs[0].token_ids == plain.outputs[0].token_ids
    assert got.accepted_prediction_tokens > 10


def test_preemption_under_speculation_keeps_greedy_output_and_frees_every_block(
    tiny_llama: LoadedModel,
) -> None:
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    plain = _run(_engine(tiny_llama, "off"), [(p, params) for p in PROMPTS])
    config = dataclasses.replace(
        tiny_engine_config(num_blocks=40, block_size=4),
        speculation=SpeculationConfig(prompt_lookup="on"),
        debug_invariants=True,
    )
    tight = LLMEngine(tiny_llama, config)
    got = _run(tight, [(p, params) for p in PROMPTS])
    assert [out.outputs[0].token_ids for out in got] == [out.outputs[0].token_ids for out in plain]
    assert tight.stats.num_preemptions > 0, "the small cache must have forced a preemption"
    assert tight.stats.spec_decode_num_accepted_tokens > 0


def test_many_streams_do_not_draft(tiny_llama: LoadedModel) -> None:
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    engine = _engine(tiny_llama, "on", max_batch=4)
    outputs = _run(engine, [(PROMPTS[0], params)] * 6)
    assert engine.stats.spec_decode_num_drafts == 0
    assert all(out.accepted_prediction_tokens == 0 for out in outputs)


def test_rejection_keeps_the_draft_with_its_probability_and_resamples_the_rest() -> None:
    """With a deterministic draft t the kept token is t with probability p(t), and otherwise follows p without t."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(2, 1)  # row 0 verifies the draft, row 1 would sample after it
    params = SamplingParams(temperature=1.0)
    entries = []
    sequence = Sequence("s", [1], params, max_tokens=8, arrival_time=0.0)
    state = RunnerSequence(sequence, None, None, None)
    num = 4000
    all_logits = logits.repeat(num, 1)  # [2 * num, V]
    entries = [DraftRows(f"s{i}", state, [1], 2 * i) for i in range(num)]
    verdicts = verify_drafts(Sampler(), all_logits, entries, (), torch.Generator().manual_seed(3))
    first = torch.tensor([verdicts[f"s{i}"].token_ids[0] for i in range(num)])
    counts = torch.bincount(first, minlength=4).double() / num
    assert counts.tolist() == pytest.approx(probs.tolist(), abs=0.03)
    kept = sum(verdicts[f"s{i}"].num_accepted for i in range(num)) / num
    assert kept == pytest.approx(0.3, abs=0.03)
