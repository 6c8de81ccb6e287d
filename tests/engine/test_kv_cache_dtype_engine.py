"""The engine over a compact KV cache (--kv-cache-dtype): the pool holds more tokens in the same memory, and
greedy output survives prefix-cache hits and preemption by recompute, which read back rows other steps stored."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ember.engine.engine_config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.outputs import RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config
from ember.models.loader import LoadedModel

PROMPTS = [
    "The quick brown fox jumps over the lazy dog and keeps running through the field " * 3,
    "1 2 3",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n" * 4,
]
GREEDY = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)


def with_kv_dtype(config: EngineConfig, kv_cache_dtype: str) -> EngineConfig:
    return dataclasses.replace(config, cache=dataclasses.replace(config.cache, kv_cache_dtype=kv_cache_dtype))


def run(engine: LLMEngine, prompts: list[list[int]], tag: str) -> dict[str, list[int]]:
    for i, ids in enumerate(prompts):
        engine.add_request(f"{tag}{i}", ids, GREEDY)
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        final.update({out.request_id: out for out in engine.step() if out.finished})
    return {rid[len(tag) :]: out.outputs[0].token_ids for rid, out in final.items()}


def test_a_compact_cache_holds_more_tokens_in_the_same_memory(tiny_llama: LoadedModel) -> None:
    sized = dataclasses.replace(tiny_engine_config(num_blocks=0), kv_cache_gib=1 / 64)
    blocks = {
        name: LLMEngine(tiny_llama, with_kv_dtype(sized, name)).num_blocks
        for name in ("fp32", "fp16", "q8_0")
    }
    assert blocks["fp16"] == pytest.approx(2 * blocks["fp32"], abs=2)
    head_dim = tiny_llama.config.head_dim
    assert blocks["q8_0"] == pytest.approx(blocks["fp32"] * 4 * head_dim / (head_dim + 4), abs=2)


def test_auto_keeps_fp32_where_decodes_run_in_torch(tiny_llama: LoadedModel) -> None:
    """The tiny fp32 model is not on the native kernels, so `auto` stays with the model's dtype."""
    engine = LLMEngine(tiny_llama, tiny_engine_config())
    assert engine.kv_format.name == "fp32"
    assert engine.runner.kv_caches[0][0].dtype == torch.float32


@pytest.mark.parametrize("kv_cache_dtype", ["fp16", "q8_0"])
def test_greedy_output_survives_prefix_hits_and_preemption(
    tiny_llama: LoadedModel, kv_cache_dtype: str
) -> None:
    ids = [tiny_llama.tokenizer.encode(p) for p in PROMPTS]
    roomy = LLMEngine(tiny_llama, with_kv_dtype(tiny_engine_config(num_blocks=256), kv_cache_dtype))
    assert roomy.kv_format.name == kv_cache_dtype
    first = run(roomy, ids, "a")
    again = run(roomy, ids, "b")  # the prompts' full blocks come from the prefix cache this time
    assert roomy.stats.prefix_cache_hits > 0
    assert again == first
    tight = LLMEngine(
        tiny_llama, with_kv_dtype(tiny_engine_config(num_blocks=20, prompt_lookup="off"), kv_cache_dtype)
    )
    assert run(tight, ids, "c") == first
    assert tight.stats.num_preemptions > 0, "the small cache must have forced a preemption"
