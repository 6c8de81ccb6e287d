"""The fused decode step's attention phase alone, per instruction set and KV format, on the default model's shape
(SmolLM2-135M: 30 layers, 9 query heads over 3 KV heads of 64): one step's attention over all layers for one
stream after 1k / 4k / 8k / 16k context positions (each layer its own cache, so the rows come from memory as in
serving). Prints the median ms per step over --reps, the attention-only tok/s ceiling it implies, the KV
bytes read per second, and the process's CPU ms per step (with --threads 1 the figure a loaded machine inflates
least; with more, OpenMP's spinning counts too); the CPU name and the load average beside every row.

    .venv/bin/python benchmarks/bench_decode_attention.py --threads 2 [--contexts 4096,8192] [--dtypes fp16,q8_0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ember.bench.machine import cpu_name, load_average
from ember.kernels.decode_attention import attention_isas, decode_attention
from ember.models.kv_cache_format import kv_cache_format

LAYERS, HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 30, 9, 3, 64, 16


def layer_caches(dtype: str, context: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    fmt = kv_cache_format(dtype)
    blocks = -(-context // BLOCK_SIZE)
    return [
        tuple(fmt.encode(torch.randn(blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)).contiguous() for _ in range(2))
        for _ in range(LAYERS)
    ]


def step_ms(
    caches: list[tuple[torch.Tensor, torch.Tensor]], context: int, isa: str, threads: int, reps: int
) -> tuple[float, float]:
    """(wall, CPU) median ms of one step's attention over every layer."""
    q = torch.randn(1, HEADS, HEAD_DIM)
    blocks = caches[0][0].shape[0]
    table = torch.randperm(blocks).unsqueeze(
        0
    )  # blocks in no particular order, as a long-running cache has them
    lens = torch.tensor([context])
    wall, cpu = [], []
    for _ in range(reps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        for keys, values in caches:
            decode_attention(q, keys, values, table, lens, HEAD_DIM**-0.5, isa, threads)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000 * statistics.median(wall[1:]), 1000 * statistics.median(cpu[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contexts", default="1024,4096,8192,16384")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16,q8_0")
    parser.add_argument("--isas", default="", help="comma-separated; default every one this CPU runs")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    isas = args.isas.split(",") if args.isas else list(attention_isas())
    cpu = cpu_name()
    print(f"decode attention alone, SmolLM2-135M shape, {args.threads} threads, {cpu}")
    print(
        f"{'KV':6} {'isa':7} {'context':>8} {'ms/step':>8} {'tok/s':>8} {'GB/s':>6} {'CPU ms':>7}  CPU / load"
    )
    for dtype in args.dtypes.split(","):
        fmt = kv_cache_format(dtype)
        for context in (int(c) for c in args.contexts.split(",")):
            caches = layer_caches(dtype, context)
            kv_bytes = 2 * LAYERS * KV_HEADS * fmt.row_bytes(HEAD_DIM) * context
            for isa in isas:
                ms, cpu_ms = step_ms(caches, context, isa, args.threads, args.reps)
                print(
                    f"{dtype:6} {isa:7} {context:8d} {ms:8.2f} {1000 / ms:8.1f} {kv_bytes / ms / 1e6:6.1f} {cpu_ms:7.2f}"
                    f"  {cpu} / {load_average()}"
                )


if __name__ == "__main__":
    main()
