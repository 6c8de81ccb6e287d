"""What constrained decoding costs, on the default model (SmolLM2-135M-Instruct).

Batches decode the same number of tokens per request: all unconstrained, the unconstrained part alone, and
with 25% of the requests constrained by a JSON schema (a long string field, so no constrained request ends early).
Reported: decode tokens/s of the unconstrained requests (per stream and summed) in each case, the slowdown,
and the grammar mask's cost per constrained token, timed by replaying the generated outputs through fresh
matchers (mask build = llguidance bitmask + unpacking to the sampler's bool row). Best of --repeats runs,
alternating the two cases: the machine is shared and noisy.

    .venv/bin/python benchmarks/bench_structured.py [--batch 16] [--tokens 48] [--repeats 3] [--threads 1]
                                                    [--weight-format auto|fp32|packed]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch

from ember.engine.engine_config import SchedulerConfig
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.models.loader import LoadConfig, load_model
from ember.structured.compiler import GrammarCompiler
from ember.structured.matcher import allowed_token_masks
from ember.structured.spec import StructuredSpec

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 2000},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
    },
    "required": ["title", "year"],
}
PROMPT = "<|im_start|>user\nWrite a long story title as JSON.<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class RunResult:
    step_seconds: list[float]  # each decode step (every request already past its first token)
    num_unconstrained: int
    constrained_outputs: list[list[int]]


def run_batch(engine: LLMEngine, requests: int, tokens: int, constrained: int, tag: str) -> RunResult:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    spec = StructuredSpec("json_schema", json.dumps(SCHEMA))
    for i in range(requests):
        params = SamplingParams(
            max_tokens=tokens, temperature=0.0, ignore_eos=True, structured=spec if i < constrained else None
        )
        engine.add_request(f"{tag}-{i}", prompt_ids, params)
    done: dict[str, list[int]] = {}
    seen: set[str] = set()
    step_seconds: list[float] = []
    while engine.has_unfinished():
        decoding = len(seen) == requests  # prefill steps are not timed
        begin = time.perf_counter()
        outputs = engine.step()
        if decoding:
            step_seconds.append(time.perf_counter() - begin)
        for output in outputs:
            seen.add(output.request_id)
            if output.finished:
                done[output.request_id] = output.outputs[0].token_ids
    return RunResult(step_seconds, requests - constrained, [done[f"{tag}-{i}"] for i in range(constrained)])


def mask_ms_per_token(compiler: GrammarCompiler, outputs: list[list[int]], vocab_size: int) -> float:
    """Replay each constrained output through a fresh matcher; ms per mask row (one row per token)."""
    spec = StructuredSpec("json_schema", json.dumps(SCHEMA))
    matchers = [compiler.matcher(spec) for _ in outputs]
    total, count = 0.0, 0
    for step in range(min(len(ids) for ids in outputs)):
        begin = time.perf_counter()
        allowed_token_masks(matchers, vocab_size)
        total += time.perf_counter() - begin
        count += len(matchers)
        for matcher, ids in zip(matchers, outputs, strict=True):
            matcher.accept(ids[step])
    return 1000.0 * total / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weight-format", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(LoadConfig(weight_format=args.weight_format))
    config = EngineConfig(
        scheduler=SchedulerConfig(
            max_num_seqs=max(args.batch, 1), max_num_batched_tokens=max(args.batch, 512)
        )
    )
    engine = LLMEngine(model, config)
    constrained = args.batch // 4
    engine.grammar_compiler.grammar_tokenizer  # noqa: B018 - built once up front, not inside a timed run
    run_batch(engine, args.batch, 4, constrained, "warmup")
    cases = {
        f"{args.batch} unconstrained": (args.batch, 0),
        f"{args.batch - constrained} unconstrained alone": (args.batch - constrained, 0),
        f"{args.batch - constrained} + {constrained} constrained (25%)": (args.batch, constrained),
    }
    runs: dict[str, list[RunResult]] = {name: [] for name in cases}
    for repeat in range(args.repeats):  # interleaved, so load changes on the machine hit every case
        for name, (requests, num_constrained) in cases.items():
            runs[name].append(run_batch(engine, requests, args.tokens, num_constrained, f"{name}-{repeat}"))
    mixed_name = list(cases)[2]
    mask_ms = statistics.median(
        mask_ms_per_token(engine.grammar_compiler, run.constrained_outputs, model.config.vocab_size)
        for run in runs[mixed_name]
    )
    print(
        f"SmolLM2-135M ({model.weight_format}), {args.threads} threads, {args.tokens} tokens per request, "
        f"median decode step over {args.repeats} interleaved runs"
    )
    print(f"{'batch':<32} {'step ms':>9} {'unconstrained tok/s/stream':>27} {'unconstrained tok/s':>20}")
    per_stream: dict[str, float] = {}
    for name, results in runs.items():
        step = statistics.median(s for run in results for s in run.step_seconds)
        per_stream[name] = 1.0 / step  # every running request gets one token per decode step
        total = results[0].num_unconstrained / step
        print(f"{name:<32} {1000 * step:>9.1f} {per_stream[name]:>27.1f} {total:>20.1f}")
    same_batch = list(cases)[0]
    slowdown = 100.0 * (1.0 - per_stream[mixed_name] / per_stream[same_batch])
    print(f"unconstrained slowdown from the constrained rows (same batch size): {slowdown:.1f}%")
    print(f"grammar mask per constrained token: {mask_ms:.3f} ms (vocab {model.config.vocab_size})")


if __name__ == "__main__":
    main()
