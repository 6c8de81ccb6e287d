"""LoRA decode vs the base model, same run, default model (SmolLM2-135M-Instruct, GGUF Q4_1), greedy (#15 item 3).

Adapters are rank 8 on all 7 projections (q, k, v, o, gate, up, down), alpha 16, random weights of a trained
adapter's size (TrainableLora with B drawn instead of zero). Workloads, each alternated with its base-model twin
`--repeats` times (medians):
  1 stream     one request, base model vs the adapter;
  16 streams   16 requests on the base model vs 16 over 4 adapters (4 each), all in one batch.
Decode tok/s is the number of requests over the median time of the steps that decode one token of each (every
step after the prefill but the last ones); the median keeps a step the loaded machine preempted out. The adapter row of the module path (DecoderModel.forward, where LoRA rows
went before they ran inside the fused step) is the "before" figure. Targets: 1 stream >= 85% of base, 16 streams
>= 80%. The steps' forward paths (fused / modules) are counted for every workload.

    .venv/bin/python benchmarks/bench_lora_decode.py [--threads 2] [--repeats 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from ember.bench.machine import cpu_name
from ember.engine.engine_config import CacheConfig, EngineConfig, SchedulerConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.speculation.config import SpeculationConfig
from ember.lora.adapter import LoraAdapter
from ember.lora.layers import attach_trainable_lora
from ember.lora.targets import TARGET_MODULES
from ember.models.loader import LoadConfig, LoadedModel, load_model
from ember.threads import configure_torch_threads

RANK = 8
ADAPTERS = 4


def random_adapter(loaded: LoadedModel, name: str, seed: int) -> LoraAdapter:
    """A rank-8 adapter on every projection, as a fine-tuning job hands it to the engine, with B random."""
    trainable = attach_trainable_lora(loaded.network, RANK, 2.0 * RANK, 0.0, TARGET_MODULES, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in trainable.lora_B.values():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.02)
    return trainable.to_adapter(name)


def decode_rate(
    engine: LLMEngine, prompts: list[list[int]], adapters: list[str | None], tokens: int, tag: str
) -> float:
    """Decode tok/s of the requests together: their number over the median time of a step once every request
    has its first token (a median over the run's steps: a step the loaded machine preempted does not count)."""
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    for i, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        engine.add_request(f"{tag}-{i}", prompt, params, lora_id=adapter)
    prefilled = False
    step_times: list[float] = []
    while engine.has_unfinished():
        start = time.perf_counter()
        outputs = engine.step()
        elapsed = time.perf_counter() - start
        if prefilled and len(outputs) == len(prompts):  # a step that decoded one token of every request
            step_times.append(elapsed)
        prefilled = prefilled or all(len(o.outputs[0].token_ids) > 0 for o in outputs)
    return len(prompts) / statistics.median(step_times)


def paths(engine: LLMEngine, before: tuple[int, int]) -> tuple[int, int]:
    stats = engine.stats
    return stats.num_fused_steps - before[0], stats.num_module_steps - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    args = parser.parse_args()
    configure_torch_threads(args.threads)
    loaded = load_model(LoadConfig(None, "auto"))
    config = EngineConfig(
        cache=CacheConfig(block_size=16),
        scheduler=SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=512, max_model_len=2048),
        speculation=SpeculationConfig(prompt_lookup="off"),  # one token per step: the decode step itself
        kv_cache_gib=0.5,
    )
    engines = {
        "fused": LLMEngine(loaded, config),
        "modules": LLMEngine(loaded, dataclasses.replace(config, fused_decode=False)),
    }
    names = [f"r{RANK}-{i}" for i in range(ADAPTERS)]
    for i, name in enumerate(names):
        adapter = random_adapter(loaded, name, seed=i)
        for engine in engines.values():
            engine.register_lora(name, adapter)
    for engine in engines.values():
        engine.scheduler.block_manager.enable_prefix_caching = False  # every run pays its own prefill
    tokenizer = engines["fused"].tokenizer
    prompts = [tokenizer.encode(f"Tell story number {i} about a cat and a lighthouse.") for i in range(16)]

    workloads = [  # (name, engine, prompts, adapters)
        ("1 stream, base", "fused", prompts[:1], [None]),
        ("1 stream, adapter", "fused", prompts[:1], [names[0]]),
        ("1 stream, adapter (module path)", "modules", prompts[:1], [names[0]]),
        ("16 streams, base", "fused", prompts, [None] * 16),
        (f"16 streams over {ADAPTERS} adapters", "fused", prompts, [names[i % ADAPTERS] for i in range(16)]),
        (
            f"16 over {ADAPTERS} adapters (module path)",
            "modules",
            prompts,
            [names[i % ADAPTERS] for i in range(16)],
        ),
    ]
    rates: dict[str, list[float]] = {name: [] for name, *_ in workloads}
    steps: dict[str, tuple[int, int]] = {}
    for r in range(args.repeats):
        for name, which, batch, adapters in workloads:
            engine = engines[which]
            before = (engine.stats.num_fused_steps, engine.stats.num_module_steps)
            rates[name].append(decode_rate(engine, batch, adapters, args.tokens, f"{name}-{r}"))
            steps[name] = paths(engine, before)
    load = os.getloadavg()
    print(
        f"CPU: {cpu_name()}, {args.threads} threads; load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min); "
        f"model {loaded.name}; rank-{RANK} adapters on {len(TARGET_MODULES)} projections; "
        f"{args.tokens} tokens a request; medians of {args.repeats}"
    )
    print(f"{'workload':38} {'decode tok/s':>12} {'vs base':>8}  steps of the last run (fused / modules)")
    base_of = {
        "1": statistics.median(rates["1 stream, base"]),
        "16": statistics.median(rates["16 streams, base"]),
    }
    for name, *_ in workloads:
        rate = statistics.median(rates[name])
        ratio = rate / base_of[name.split()[0]]
        fused, modules = steps[name]
        print(f"{name:38} {rate:12.1f} {ratio:7.0%}  {fused} / {modules}")


if __name__ == "__main__":
    main()
