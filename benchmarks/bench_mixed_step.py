"""#15 item 3's mixed steps on the default model: one engine step's forward when a new request's prompt chunk
arrives beside 16 decoding streams, on each path, interleaved so the machine's load weighs on all alike.

Cases (the same captured batches every time; KV rewritten in place, so each repeat computes the same thing):
  pure decode          the 16 decode rows alone, fused (what a step costs without the arrival)
  short chunk          16 decodes + a 128-token prompt (context 128): unsplit module path (before), split (decode
                       rows fused, chunk on the modules), all rows fused (the rule now: chunk context <= 512)
  long chunk           16 decodes + a 495-token chunk ending at a 1485-token context: unsplit module path, split
                       (the rule now), all rows fused
Medians of --repeats, the CPU (lscpu) and the load average printed beside the table.

    .venv/bin/python benchmarks/bench_mixed_step.py --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from ember.bench.machine import cpu_description, lscpu_fields
from ember.bench.workloads import PromptMaker
from ember.engine.batch_inputs import BatchInputs
from ember.engine.batch_split import split_batch
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.model_runner import ModelRunner
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from ember.models.loader import LoadConfig, load_model
from ember.threads import configure_torch_threads

STREAMS = 16


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def _capture_step(engine: LLMEngine, request_id: str, prompt: list[int]) -> list[ScheduledSequence]:
    """Adds a request and runs it to its end; returns the scheduled sequences of the step that ran its largest
    chunk (the latest of equal ones) beside the decodes."""
    runner = engine.runner
    steps: list[tuple[int, int, list[ScheduledSequence]]] = []
    execute = runner.execute

    def recording(sched: SchedulerOutput) -> object:
        for item in sched.scheduled:
            if item.sequence_id.startswith(request_id):
                steps.append((item.num_tokens, item.start_position, list(sched.scheduled)))
        return execute(sched)

    runner.execute = recording  # type: ignore[method-assign]
    engine.add_request(request_id, prompt, _greedy(2))
    try:
        done = False
        while not done:
            done = any(out.request_id == request_id and out.finished for out in engine.step())
    finally:
        runner.execute = execute  # type: ignore[method-assign]
    return max(steps, key=lambda step: step[:2])[2]


def _paths(runner: ModelRunner, batch: BatchInputs) -> dict[str, Callable[[], object]]:
    """Each way to run the batch's forward: unsplit modules, split (fused decode rows + modules), all fused."""
    network, fused, kv = runner.network, runner.forward.fused, runner.kv_caches
    assert fused is not None, "the default model's weights must be on the kernels"
    takes = [q <= 16 for q in batch.attn.query_lens]
    decodes, chunk = split_batch(batch.input_ids, batch.positions, batch.attn, None, takes)

    def split() -> None:
        network(chunk.input_ids, chunk.positions, chunk.attn, kv)
        fused.forward(decodes.input_ids, decodes.positions, decodes.attn, kv)

    return {
        "modules (unsplit)": lambda: network(batch.input_ids, batch.positions, batch.attn, kv),
        "split": split,
        "all fused": lambda: fused.forward(batch.input_ids, batch.positions, batch.attn, kv),
        "decode rows alone, fused": lambda: fused.forward(
            decodes.input_ids, decodes.positions, decodes.attn, kv
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    configure_torch_threads(args.threads)
    loaded = load_model(LoadConfig(None, "auto"))
    scheduler = SchedulerConfig(max_num_seqs=STREAMS + 2, max_num_batched_tokens=512, max_model_len=2048)
    engine = LLMEngine(loaded, EngineConfig(cache=CacheConfig(block_size=16), scheduler=scheduler))
    prompts = PromptMaker(loaded.config.vocab_size)
    for i in range(STREAMS):
        engine.add_request(f"stream-{i}", prompts.make(64), _greedy(1500))
    while any(engine.sequences[f"stream-{i}"].sequence.num_output_tokens == 0 for i in range(STREAMS)):
        engine.step()
    runner = engine.runner
    cases = {
        "16 decodes + 128-token prompt": _capture_step(engine, "short", prompts.make(128)),
        "16 decodes + 495 chunk at 1485": _capture_step(engine, "long", prompts.make(1488)),
    }
    timings: dict[tuple[str, str], list[float]] = {}
    with torch.inference_mode():
        plans = {name: _paths(runner, runner.build_inputs(items)) for name, items in cases.items()}
        for _ in range(args.repeats):  # interleaved: a change of load weighs on every path alike
            for case, paths in plans.items():
                for path, run in paths.items():
                    start = time.perf_counter()
                    run()
                    timings.setdefault((case, path), []).append(time.perf_counter() - start)
    cpu = cpu_description(lscpu_fields())
    print(f"CPU: {cpu}; {args.threads} threads; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'step':34s} {'forward':26s} {'median ms':>10s} {'vs modules':>11s}")
    for case in cases:
        before = statistics.median(timings[(case, "modules (unsplit)")])
        for path in plans[case]:
            ms = statistics.median(timings[(case, path)])
            print(f"{case:34s} {path:26s} {ms * 1e3:10.1f} {before / ms:10.2f}x")


if __name__ == "__main__":
    main()
