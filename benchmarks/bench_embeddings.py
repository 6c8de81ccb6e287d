"""What an embeddings request costs the engine, on the default model (SmolLM2-135M-Instruct): #12's case of
16 inputs x 1000 tokens, through the scheduler (chunked beside a decoding stream) and, for comparison, as the
one-shot forward over all inputs that /v1/embeddings ran before. Each row runs in its own process, so its peak
RSS growth is its own.

    .venv/bin/python benchmarks/bench_embeddings.py [--inputs 16] [--tokens 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from ember.engine.engine_config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.models.attention_metadata import AttentionMetadata
from ember.models.loader import LoadConfig, load_model


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, num_inputs: int, num_tokens: int) -> dict[str, float | int | str]:
    model = load_model(LoadConfig())
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(100, 40_000, (num_tokens,), generator=gen).tolist() for _ in range(num_inputs)]
    engine = LLMEngine(model, EngineConfig())
    engine.add_request("warm-up", [1, 2, 3], SamplingParams(max_tokens=4, temperature=0.0))
    while engine.has_unfinished():
        engine.step()
    base = peak_rss_mib()
    start = time.perf_counter()
    steps, stream_tokens = 1, 0
    if mode == "one-shot forward (before)":
        lens = [len(ids) for ids in inputs]
        with torch.inference_mode():
            flat = torch.tensor([t for ids in inputs for t in ids])
            positions = torch.cat([torch.arange(n) for n in lens])
            model.network(flat, positions, AttentionMetadata.for_prefill_without_cache(lens), None)
    else:
        stream = SamplingParams(max_tokens=100_000, temperature=0.0, ignore_eos=True)
        engine.add_request("stream", [1, 2, 3], stream)
        engine.step()  # the stream is decoding before the embedding arrives
        engine.add_embedding_request("embedding", inputs)
        steps = 0
        while "embedding" in engine.embeddings:
            engine.step()
            steps += 1
        stream_tokens = engine.requests["stream"].sequences[0].sequence.num_output_tokens - 1
    return {
        "mode": mode,
        "seconds": time.perf_counter() - start,
        "engine_steps": steps,
        "stream_tokens": stream_tokens,
        "peak_rss_growth_mib": peak_rss_mib() - base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # one row, in a child process
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.inputs, args.tokens)))
        return
    rows = []
    for mode in ("through the scheduler (now)", "one-shot forward (before)"):
        command = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--inputs",
            str(args.inputs),
            "--tokens",
            str(args.tokens),
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.inputs} inputs x {args.tokens} tokens, default model, {torch.get_num_threads()} threads")
    header = (
        f"{'path':<28} {'seconds':>8} {'steps':>6} {'stream tokens meanwhile':>24} {'peak RSS growth':>16}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['mode']:<28} {row['seconds']:>8.1f} {row['engine_steps']:>6} {row['stream_tokens']:>24} "
            f"{row['peak_rss_growth_mib']:>12.0f} MiB"
        )


if __name__ == "__main__":
    main()
