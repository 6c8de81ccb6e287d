"""Two models in one process, both decoding at once: how their engine threads should share the cores.

Each row runs two engine threads (the default model, SmolLM2-135M GGUF, loaded twice: two engines of their
own), each decoding `--streams` greedy streams for `--seconds`, and prints decode tok/s per engine and together,
beside one engine alone. The arrangements: each engine on every core at once (two OpenMP teams on the same
cores), the cores split between them (1 thread each on 2 cores), and ember's step gate (one engine steps at a
time on every core; server/common/model_registry.py). Medians of `--repeats` runs; the CPU and load are printed.

    .venv/bin/python benchmarks/bench_two_models.py [--threads 2] [--streams 1,8] [--seconds 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

from ember.bench.machine import cpu_name
from ember.engine.engine_config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.models.loader import LoadConfig, load_model
from ember.threads import StepGate, configure_torch_threads


def decode_loop(
    engine: LLMEngine, streams: int, seconds: float, threads: int, gate: StepGate | None, out: list[int]
) -> None:
    """Keeps `streams` greedy streams decoding for `seconds` on this thread; counts the tokens generated."""
    torch.set_num_threads(threads)
    params = SamplingParams(max_tokens=100_000, temperature=0.0, ignore_eos=True)
    for i in range(streams):
        engine.add_request(f"s{i}", [1, 2, 3, 4 + i], params)
    while engine.scheduler.stats().num_running < streams:  # prefill outside the timed window
        engine.step()
    tokens = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if gate is None:
            outputs = engine.step()
        else:
            with gate:
                outputs = engine.step()
        tokens += len(outputs)
    for i in range(streams):
        engine.abort_request(f"s{i}")
    out.append(tokens)


def run(engines: list[LLMEngine], streams: int, seconds: float, threads: int, gated: bool) -> list[float]:
    gate = StepGate() if gated else None
    counts: list[list[int]] = [[] for _ in engines]
    workers = [
        threading.Thread(target=decode_loop, args=(e, streams, seconds, threads, gate, c))
        for e, c in zip(engines, counts, strict=True)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [c[0] / seconds for c in counts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_torch_threads(args.threads)
    config = EngineConfig(kv_cache_gib=0.25)
    engines = [LLMEngine(load_model(LoadConfig()), config) for _ in range(2)]
    arrangements = [
        ("one engine alone", engines[:1], args.threads, False),
        (f"two, {args.threads} threads each at once", engines, args.threads, False),
        (f"two, cores split ({max(1, args.threads // 2)} each)", engines, max(1, args.threads // 2), False),
        (f"two, step gate ({args.threads} threads, one steps at a time)", engines, args.threads, True),
    ]
    print(f"CPU: {cpu_name()}; load before: {os.getloadavg()[0]:.2f}; default model (SmolLM2-135M Q4_1)")
    print(f"{'arrangement':<52} {'streams':>7} {'engine A tok/s':>15} {'engine B tok/s':>15} {'total':>8}")
    for streams in (int(s) for s in args.streams.split(",")):
        for label, group, threads, gated in arrangements:
            runs = [run(group, streams, args.seconds, threads, gated) for _ in range(args.repeats)]
            per_engine = [statistics.median(r[i] for r in runs) for i in range(len(group))]
            total = statistics.median(sum(r) for r in runs)
            b = f"{per_engine[1]:15.1f}" if len(per_engine) > 1 else f"{'-':>15}"
            print(f"{label:<52} {streams:>7} {per_engine[0]:15.1f} {b} {total:8.1f}")
    print(f"load after: {os.getloadavg()[0]:.2f} (medians of {args.repeats} runs of {args.seconds:g} s)")


if __name__ == "__main__":
    main()
