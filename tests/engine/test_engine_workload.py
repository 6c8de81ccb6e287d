"""A long random workload, and one request's failure staying its own."""

from __future__ import annotations

import random

from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config
from ember.models.loader import LoadedModel


def test_200_mixed_requests_finish_with_no_leaked_blocks(tiny_llama: LoadedModel) -> None:
    rng = random.Random(0)
    engine = LLMEngine(
        tiny_llama, tiny_engine_config(num_blocks=48, max_num_seqs=16, max_num_batched_tokens=128)
    )
    shared_prefix = [rng.randrange(100, 40000) for _ in range(40)]
    pending = list(range(200))
    live: set[str] = set()
    finished: dict[str, str] = {}
    aborted: set[str] = set()
    steps = 0
    while pending or engine.has_unfinished():
        while pending and len(live) < 24:
            i = pending.pop()
            prompt = ([*shared_prefix] if rng.random() < 0.5 else []) + [
                rng.randrange(100, 40000) for _ in range(rng.randint(1, 90))
            ]
            params = SamplingParams(
                n=rng.choice([1, 1, 1, 2, 3]),
                max_tokens=rng.randint(1, 24),
                temperature=rng.choice([0.0, 0.7, 1.0]),
                seed=rng.choice([None, i]),
                stop=rng.choice([[], ["e"], [" the", "ing"]]),
                logprobs=rng.choice([None, 0, 3]),
            )
            engine.add_request(f"q{i}", prompt, params, cache_salt=rng.choice([None, "tenant-a"]))
            live.add(f"q{i}")
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].finish_reason or ""
                live.discard(out.request_id)
        steps += 1
        if live and rng.random() < 0.05:
            victim = rng.choice(sorted(live))
            engine.abort_request(victim)
            live.discard(victim)
            aborted.add(victim)
        engine.scheduler.block_manager.check_invariants()
    assert len(finished) + len(aborted - set(finished)) == 200
    assert set(finished.values()) <= {"stop", "length", "abort"}
    bm = engine.scheduler.block_manager
    assert bm.num_free_blocks == engine.num_blocks - 1
    assert not engine.requests and not engine.sequences and engine.runner.num_sequences == 0
    assert engine.stats.num_preemptions > 0 and engine.stats.prefix_cache_hits > 0


class ExplodingTokenizer:
    """The real tokenizer, except that decoding one chosen token raises, as a broken vocabulary entry would."""

    def __init__(self, inner: object, bad_token: int) -> None:
        self.inner = inner
        self.bad_token = bad_token

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        if self.bad_token in ids:
            raise RuntimeError("corrupt vocabulary entry")
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


def test_a_request_failing_in_detokenization_fails_alone(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    good_prompt, bad_prompt = tok.encode("1 2 3"), tok.encode("Hello there")
    probe = LLMEngine(tiny_llama, tiny_engine_config())
    greedy = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    probe.add_request("p", bad_prompt, greedy)
    while probe.has_unfinished():
        outs = probe.step()
    bad_token = outs[-1].outputs[0].token_ids[1]
    probe.add_request("g", good_prompt, greedy)
    while probe.has_unfinished():
        outs = probe.step()
    good_tokens = outs[-1].outputs[0].token_ids
    assert bad_token not in good_tokens

    broken = LLMEngine(tiny_llama, tiny_engine_config())
    broken.tokenizer = ExplodingTokenizer(tok, bad_token)
    broken.add_request("bad", bad_prompt, greedy)
    broken.add_request("good", good_prompt, greedy)
    final = {}
    while broken.has_unfinished():
        for out in broken.step():
            if out.finished:
                final[out.request_id] = out
    assert final["bad"].error is not None and "corrupt vocabulary entry" in final["bad"].error
    assert final["bad"].outputs[0].finish_reason == "error"
    assert final["good"].error is None and final["good"].outputs[0].token_ids == good_tokens
    assert broken.scheduler.block_manager.num_free_blocks == broken.num_blocks - 1
