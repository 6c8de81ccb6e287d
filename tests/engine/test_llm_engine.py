"""The engine end to end on a tiny random model: batching, seeds, stops, streaming, n/best_of, preemption."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ember.engine.llm_engine import LLMEngine
from ember.engine.outputs import RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config
from ember.models.attention_metadata import AttentionMetadata
from ember.models.loader import LoadedModel

PROMPTS = [
    "Hello there",
    "The quick brown fox jumps over the lazy dog and keeps running through the field " * 3,
    "1 2 3",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n" * 5,
]


def run(
    engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]
) -> dict[str, RequestOutput]:
    """Adds every prompt at once, steps to the end, and returns the final output of each request."""
    for i, (ids, p) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(f"r{i}", ids, p)
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    return final


def encode_all(model: LoadedModel, prompts: list[str]) -> list[list[int]]:
    return [model.tokenizer.encode(p) for p in prompts]


def assert_no_leak(engine: LLMEngine) -> None:
    bm = engine.scheduler.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == engine.num_blocks - 1, "every block except the null block is free again"
    assert not engine.requests and not engine.sequences


def test_batched_greedy_equals_one_at_a_time(tiny_llama: LoadedModel) -> None:
    ids = encode_all(tiny_llama, PROMPTS)
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    alone = []
    for prompt in ids:
        engine = LLMEngine(tiny_llama, tiny_engine_config(max_num_batched_tokens=64))
        alone.append(run(engine, [prompt], [greedy])["r0"].outputs[0].token_ids)
    # A small token budget forces chunked prefill of the long prompts next to running decodes.
    engine = LLMEngine(tiny_llama, tiny_engine_config(max_num_batched_tokens=64))
    batched = run(engine, ids, [greedy] * len(ids))
    assert [batched[f"r{i}"].outputs[0].token_ids for i in range(len(ids))] == alone
    assert_no_leak(engine)


def test_greedy_matches_a_plain_full_forward(tiny_llama: LoadedModel) -> None:
    """The engine's paged, chunked decode picks the argmax of a cache-free forward over the whole text."""
    prompt = tiny_llama.tokenizer.encode(PROMPTS[1])
    engine = LLMEngine(tiny_llama, tiny_engine_config(max_num_batched_tokens=32))
    out = run(engine, [prompt], [SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)])["r0"]
    tokens = list(prompt)
    with torch.inference_mode():
        for _ in range(8):
            ids = torch.tensor(tokens)
            hidden = tiny_llama.network(
                ids,
                torch.arange(len(tokens)),
                AttentionMetadata.for_prefill_without_cache([len(tokens)]),
                None,
            )
            tokens.append(int(tiny_llama.network.compute_logits(hidden[-1:]).argmax()))
    assert out.outputs[0].token_ids == tokens[len(prompt) :]


def test_seeded_sampling_is_reproducible_across_batch_compositions(tiny_llama: LoadedModel) -> None:
    ids = encode_all(tiny_llama, PROMPTS)
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    other = SamplingParams(max_tokens=16, temperature=1.3, ignore_eos=True)
    alone = run(LLMEngine(tiny_llama, tiny_engine_config()), [ids[0]], [seeded])["r0"].outputs[0].token_ids
    mixed = run(LLMEngine(tiny_llama, tiny_engine_config()), [ids[2], ids[0], ids[1]], [other, seeded, other])
    assert mixed["r1"].outputs[0].token_ids == alone
    different_seed = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=99, ignore_eos=True)
    third = run(LLMEngine(tiny_llama, tiny_engine_config()), [ids[0]], [different_seed])["r0"]
    assert third.outputs[0].token_ids != alone


def test_stop_string_split_across_tokens_is_found_and_excluded(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    prompt = tok.encode(PROMPTS[0])
    free = run(
        LLMEngine(tiny_llama, tiny_engine_config()),
        [prompt],
        [SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)],
    )
    tokens = free["r0"].outputs[0].token_ids
    pieces = [tok.decode(tokens[: i + 1]) for i in range(len(tokens))]
    # A stop string made of the end of token 4's text and the start of token 5's text.
    cut = len(pieces[3])
    stop = pieces[5][cut - 2 : cut + 2]
    assert len(stop) == 4 and stop not in pieces[3]
    expected = pieces[5][: pieces[5].find(stop)]
    stopped = run(
        LLMEngine(tiny_llama, tiny_engine_config()),
        [prompt],
        [SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, stop=["never-appears", stop])],
    )["r0"].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stopped.text == expected
    assert stop not in stopped.text


def test_streamed_deltas_concatenate_to_the_final_text(tiny_llama: LoadedModel) -> None:
    ids = encode_all(tiny_llama, ["日本語のテキスト 🎉🎉", "emoji 🐍🐍🐍 and accents éèê"])
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    params = SamplingParams(
        max_tokens=30, temperature=1.0, seed=7, ignore_eos=True, logprobs=1, stop=["ab", "\n\n"]
    )
    for i, prompt in enumerate(ids):
        engine.add_request(f"s{i}", prompt, params)
    deltas: dict[str, str] = {"s0": "", "s1": ""}
    delta_tokens: dict[str, list[int]] = {"s0": [], "s1": []}
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            deltas[out.request_id] += out.outputs[0].delta_text
            delta_tokens[out.request_id] += out.outputs[0].delta_token_ids
            assert "\ufffd" not in out.outputs[0].delta_text
            if out.finished:
                final[out.request_id] = out
    assert set(final) == {"s0", "s1"}  # both finished, so the checks below cover both streams
    for rid, out in final.items():
        assert deltas[rid] == out.outputs[0].text
        assert delta_tokens[rid] == out.outputs[0].token_ids
        assert len(out.outputs[0].logprobs) == len(out.outputs[0].token_ids)


def test_n_samples_share_the_prompt_and_differ(tiny_llama: LoadedModel) -> None:
    prompt = tiny_llama.tokenizer.encode(PROMPTS[1])
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    out = run(
        engine, [prompt], [SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=3, ignore_eos=True)]
    )["r0"]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) == 3
    assert engine.stats.prefix_cache_hits > 0, "samples 2 and 3 reuse the first sample's prompt blocks"
    assert_no_leak(engine)


def test_best_of_returns_the_n_most_likely_samples(tiny_llama: LoadedModel) -> None:
    prompt = tiny_llama.tokenizer.encode(PROMPTS[0])
    params = SamplingParams(n=2, best_of=5, max_tokens=8, temperature=1.0, seed=11, ignore_eos=True)
    everything = run(
        LLMEngine(tiny_llama, tiny_engine_config()),
        [prompt],
        [SamplingParams(n=5, max_tokens=8, temperature=1.0, seed=11, ignore_eos=True, logprobs=0)],
    )["r0"]
    best = run(LLMEngine(tiny_llama, tiny_engine_config()), [prompt], [params])["r0"]
    ranked = sorted(everything.outputs, key=lambda o: o.cumulative_logprob, reverse=True)[:2]
    assert sorted(o.token_ids for o in best.outputs) == sorted(o.token_ids for o in ranked)
    assert [o.index for o in best.outputs] == [0, 1]
    assert all(o.logprobs is None for o in best.outputs), "logprobs were not asked for"


def test_prompt_logprobs_match_a_full_forward(tiny_llama: LoadedModel) -> None:
    prompt = tiny_llama.tokenizer.encode(PROMPTS[1])
    engine = LLMEngine(tiny_llama, tiny_engine_config(max_num_batched_tokens=32))
    out = run(engine, [prompt], [SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=2)])["r0"]
    with torch.inference_mode():
        hidden = tiny_llama.network(
            torch.tensor(prompt),
            torch.arange(len(prompt)),
            AttentionMetadata.for_prefill_without_cache([len(prompt)]),
            None,
        )
        logprobs = torch.log_softmax(tiny_llama.network.compute_logits(hidden).float(), dim=-1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for pos in range(1, len(prompt)):
        entry = out.prompt_logprobs[pos]
        assert entry.token_id == prompt[pos]
        assert abs(entry.logprob - float(logprobs[pos - 1, prompt[pos]])) < 1e-4
        assert len(entry.top) == 2


def test_preemption_by_recompute_keeps_greedy_output(tiny_llama: LoadedModel) -> None:
    ids = encode_all(tiny_llama, PROMPTS)
    greedy = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    roomy = run(LLMEngine(tiny_llama, tiny_engine_config(num_blocks=256)), ids, [greedy] * 4)
    # one token per step (no drafts), so the sequences grow together until the cache runs out
    tight_engine = LLMEngine(tiny_llama, tiny_engine_config(num_blocks=24, prompt_lookup="off"))
    tight = run(tight_engine, ids, [greedy] * 4)
    assert tight_engine.stats.num_preemptions > 0, "the small cache must have forced a preemption"
    for rid in roomy:
        assert tight[rid].outputs[0].token_ids == roomy[rid].outputs[0].token_ids
    assert_no_leak(tight_engine)


def test_abort_frees_every_block(tiny_llama: LoadedModel) -> None:
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    prompt = tiny_llama.tokenizer.encode(PROMPTS[3])
    engine.add_request("a", prompt, SamplingParams(n=2, max_tokens=50, temperature=1.0, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.scheduler.block_manager.num_free_blocks < engine.num_blocks - 1
    out = engine.abort_request("a")
    assert out is not None and out.finished and {o.finish_reason for o in out.outputs} == {"abort"}
    assert_no_leak(engine)


def test_max_tokens_stop_token_and_min_tokens(tiny_llama: LoadedModel) -> None:
    prompt = tiny_llama.tokenizer.encode(PROMPTS[1])
    free = run(
        LLMEngine(tiny_llama, tiny_engine_config()),
        [prompt],
        [SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)],
    )["r0"].outputs[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    # Declare a later greedy token a stop token: generation ends on it, with reason "stop" and without its text.
    k = next(i for i in range(1, 12) if free.token_ids[i] not in free.token_ids[:i])
    stop_at = free.token_ids[k]
    out = run(
        LLMEngine(tiny_llama, tiny_engine_config()),
        [prompt],
        [SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[stop_at])],
    )["r0"].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at
    assert out.token_ids == free.token_ids[: k + 1]
    assert out.text == tiny_llama.tokenizer.decode(free.token_ids[:k])
    held = run(
        LLMEngine(tiny_llama, tiny_engine_config()),
        [prompt],
        [SamplingParams(max_tokens=12, min_tokens=k + 2, temperature=0.0, stop_token_ids=[stop_at])],
    )["r0"].outputs[0]
    assert len(held.token_ids) >= k + 2 and stop_at not in held.token_ids[: k + 1]


def test_debug_mode_checks_the_bookkeeping_each_time_the_engine_goes_idle(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = LLMEngine(tiny_llama, dataclasses.replace(tiny_engine_config(), debug_invariants=True))
    manager = engine.scheduler.block_manager
    busy_at_check: list[bool] = []
    check = manager.check_invariants
    monkeypatch.setattr(
        manager, "check_invariants", lambda: (busy_at_check.append(engine.has_unfinished()), check())[1]
    )
    ids = encode_all(tiny_llama, PROMPTS[:2])
    greedy = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    run(engine, ids, [greedy, greedy])
    assert busy_at_check == [False], "checked once, when the work ran out; never while busy"
    engine.add_request("gone", ids[0], SamplingParams(max_tokens=50))
    engine.step()
    engine.abort_request("gone")
    assert busy_at_check == [False, False]

    manager._take_free_block()  # a block nobody holds: the next idle moment reports it
    with pytest.raises(RuntimeError, match="ref count 1 but 0 holders"):
        run(engine, ids[:1], [greedy])


def test_without_debug_mode_nothing_is_checked(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = LLMEngine(tiny_llama, dataclasses.replace(tiny_engine_config(), debug_invariants=False))
    monkeypatch.setattr(engine.scheduler.block_manager, "check_invariants", lambda: pytest.fail("checked"))
    run(engine, encode_all(tiny_llama, PROMPTS[:1]), [SamplingParams(max_tokens=2)])
