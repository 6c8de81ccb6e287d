"""Prefill attention alone, on the default model's shape (9 query heads over 3 KV heads, head_dim 64): one
512-token chunk (the scheduler's max_num_batched_tokens) at the end of a 1k / 4k / 8k context whose earlier rows
sit in the paged cache (random rows, encoded as the cache's dtype), per layer. The torch reference (gather and
decode the context, then SDPA with a causal mask) against the native tiled kernel on each instruction set this CPU
runs it on. Median wall time over --repeats calls, GFLOP/s of the causal work (4 * keys * head_dim per query head
and query), the ratio to the reference; the CPU and the load average beside the table.

    .venv/bin/python benchmarks/bench_prefill_attention.py --threads 2 [--contexts 1024,4096,8192] [--dtype fp16]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from ember.bench.machine import cpu_description, lscpu_fields
from ember.kernels.prefill_attention import NativePrefillAttention, prefill_isas_here
from ember.models.attention import TorchAttentionBackend, write_kv_cache
from ember.models.attention_metadata import AttentionMetadata
from ember.models.kv_cache_format import kv_cache_format
from ember.threads import configure_torch_threads

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, CHUNK = 9, 3, 64, 16, 512


def chunk_inputs(context: int, dtype: str) -> tuple[torch.Tensor, ...]:
    """q, k, v of the chunk's 512 tokens, the caches holding the context before them, the block table, slots."""
    kv_format = kv_cache_format(dtype)
    blocks = math.ceil(context / BLOCK_SIZE)
    shape = (blocks + 1, BLOCK_SIZE, NUM_KV_HEADS, kv_format.row_width(HEAD_DIM))
    key_cache = torch.zeros(shape, dtype=kv_format.storage)
    value_cache = torch.zeros(shape, dtype=kv_format.storage)
    table = (torch.randperm(blocks) + 1)[None, :]  # [1, blocks]
    positions = torch.arange(context)
    slots = table[0, positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    cached = context - CHUNK
    k = torch.randn(context, NUM_KV_HEADS, HEAD_DIM)
    v = torch.randn(context, NUM_KV_HEADS, HEAD_DIM)
    write_kv_cache(key_cache, value_cache, k[:cached], v[:cached], slots[:cached])
    q = torch.randn(CHUNK, NUM_HEADS, HEAD_DIM)
    return q, k[cached:], v[cached:], key_cache, value_cache, table, slots[cached:]


def median_seconds(
    backend: TorchAttentionBackend, inputs: tuple[torch.Tensor, ...], context: int, repeats: int
) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of this thread per call (the CPU time means something with
    one thread only: a loaded machine inflates it far less than the wall clock)."""
    q, k, v, key_cache, value_cache, table, slots = inputs
    attn = AttentionMetadata(
        [CHUNK], [context], torch.tensor([0, CHUNK]), torch.tensor([context]), table, slots, BLOCK_SIZE
    )
    wall, cpu = [], []
    for _ in range(repeats + 1):  # the first call warms the caches and the thread team
        start, start_cpu = time.perf_counter(), time.thread_time()
        backend.forward(q, k, v, attn, (key_cache, value_cache), HEAD_DIM**-0.5)
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return statistics.median(wall[1:]), statistics.median(cpu[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contexts", default="1024,4096,8192")
    parser.add_argument("--dtype", default="fp16", help="KV cache dtype: fp32, fp16, bf16, q8_0")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    threads = configure_torch_threads(args.threads)
    backends = {"torch reference": TorchAttentionBackend(native_prefill=None)}
    for isa in prefill_isas_here():
        backends[f"native {isa}"] = TorchAttentionBackend(native_prefill=NativePrefillAttention(isa))
    print(
        f"CPU: {cpu_description(lscpu_fields())}; {threads} threads; KV {args.dtype}; "
        f"load average before: {Path('/proc/loadavg').read_text().split()[0]}"
    )
    one = threads == 1
    cpu_header = f" {'CPU ms':>8} {'GFLOP/s CPU':>12} {'vs torch':>9}" if one else ""
    print(
        f"{'context':>8} {'path':<24} {'ms / chunk / layer':>19} {'GFLOP/s':>8} {'vs torch':>9}{cpu_header}"
    )
    for context in (int(c) for c in args.contexts.split(",")):
        inputs = chunk_inputs(context, args.dtype)
        keys_seen = sum(range(context - CHUNK + 1, context + 1))  # each query attends its own prefix
        flops = 4 * keys_seen * NUM_HEADS * HEAD_DIM
        reference: tuple[float, float] | None = None
        for name, backend in backends.items():
            seconds, cpu = median_seconds(backend, inputs, context, args.repeats)
            reference = reference or (seconds, cpu)
            cpu_columns = (
                f" {cpu * 1e3:>8.1f} {flops / cpu / 1e9:>12.1f} {reference[1] / cpu:>8.2f}x" if one else ""
            )
            print(
                f"{context:>8} {name:<24} {seconds * 1e3:>19.1f} {flops / seconds / 1e9:>8.1f} "
                f"{reference[0] / seconds:>8.2f}x{cpu_columns}"
            )
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[0]}")


if __name__ == "__main__":
    main()
