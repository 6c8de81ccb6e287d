"""Quantized matmul kernels vs torch on the default model's linear shapes (SmolLM2-135M, GGUF Q4_1).

Per shape and batch size M: the native kernel of every family this CPU runs (AVX-512 VNNI beside AVX2), torch
fp32 matmul on pre-decoded weights, and decode+matmul (the reference path), as GFLOP/s and GB/s of GGUF weight
bytes. Then the whole decode step's linears (121 calls: 30 x (qkv, o, gate|up, down) + lm_head, every layer's
real weights, so nothing is cache-hot) as tok/s. With --engine, the engine's decode tok/s at 1 / 8 / 32 streams
with the model loaded once per family (EMBER_KERNEL_ISA), the families taking turns per repeat. Medians over
repeats with the [min, max] spread: the machine is shared and noisy; the CPU and load are printed with them.

    .venv/bin/python benchmarks/bench_kernels.py [--threads 2] [--batches 1,8,32,512] [--repeats 7]
                                                 [--skip-torch] [--steps-only] [--engine] [--engine-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import gguf
import torch

from ember.bench.machine import cpu_name
from ember.bench.workloads import PromptMaker, decode_throughput
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.speculation.config import SpeculationConfig
from ember.kernels import PreparedQuantWeight, prepare_weight, quant_matmul_prepared, supported_isas_here
from ember.kernels.kernel_isa import ISA_ENV
from ember.kernels.reference import dequantize_blocks
from ember.models.default_model import default_gguf_path
from ember.models.loader import LoadConfig, load_model
from ember.models.quant.packed_linear import dequantize_matmul
from ember.models.quant.packed_weight import PackedWeight

NUM_LAYERS = 30
ISAS = [isa for isa in supported_isas_here() if isa != "scalar"]  # the SIMD families this CPU runs
ENGINE_STREAMS = (1, 8, 32)


@dataclass(frozen=True)
class LinearShape:
    name: str
    parts: tuple[str, ...]  # GGUF tensor names (with {i} for the layer) whose rows are concatenated


SHAPES = (
    LinearShape("qkv 576->960", ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight")),
    LinearShape("o 576->576", ("blk.{i}.attn_output.weight",)),
    LinearShape("gate|up 576->3072", ("blk.{i}.ffn_gate.weight", "blk.{i}.ffn_up.weight")),
    LinearShape("down 1536->576", ("blk.{i}.ffn_down.weight",)),
)
LM_HEAD = LinearShape("lm_head 576->49152", ("token_embd.weight",))


@dataclass(frozen=True)
class RawWeight:
    qtype: str
    n: int
    k: int
    blocks: torch.Tensor  # uint8 [n, row_bytes]


@dataclass(frozen=True)
class Timing:
    median: float
    low: float
    high: float


def load_text() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def load_weights(reader: gguf.GGUFReader, shape: LinearShape, layer: int) -> RawWeight:
    tensors = {t.name: t for t in reader.tensors}
    parts = [tensors[name.format(i=layer)] for name in shape.parts]
    qtype = parts[0].tensor_type.name
    blocks = torch.cat([torch.from_numpy(p.data.copy()) for p in parts])  # [n, row_bytes]
    n = blocks.shape[0]
    k = int(parts[0].shape[0])
    return RawWeight(qtype, n, k, blocks)


@dataclass(frozen=True)
class Clock:
    """wall: elapsed time (what a user sees). cpu: this process's CPU time divided by the thread count,
    which leaves out time the OS gave our cores to other processes (only meaningful with --threads 1,
    since waiting OpenMP threads spin and count as busy)."""

    kind: str
    threads: int

    def now(self) -> float:
        return time.perf_counter() if self.kind == "wall" else time.process_time() / self.threads


def time_calls(fn: Callable[[], object], repeats: int, clock: Clock, min_seconds: float = 0.05) -> Timing:
    """Seconds per call: each repeat loops long enough to be measurable; median and spread over repeats."""
    fn()
    start = clock.now()
    fn()
    once = max(clock.now() - start, 1e-6)
    loops = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeats):
        start = clock.now()
        for _ in range(loops):
            fn()
        samples.append(max(clock.now() - start, 1e-9) / loops)
    return Timing(statistics.median(samples), min(samples), max(samples))


def cycle(fns: list[Callable[[], object]]) -> Callable[[], None]:
    """One call per invocation, rotating over the layers' weights (so none of them stays in cache)."""
    state = {"i": 0}

    def call() -> None:
        fns[state["i"] % len(fns)]()
        state["i"] += 1

    return call


def fmt_rate(work: float, t: Timing) -> str:
    return f"{work / t.median / 1e9:7.1f} [{work / t.high / 1e9:.0f}-{work / t.low / 1e9:.0f}]"


def fmt_tok(m: int, t: Timing) -> str:
    return f"{m / t.median:6.0f} [{m / t.high:.0f}-{m / t.low:.0f}]"


def bench_shapes(
    layers: dict[str, list[RawWeight]],
    prepared: dict[str, list[PreparedQuantWeight]],
    dense: dict[str, list[torch.Tensor]],
    batches: list[int],
    threads: int,
    repeats: int,
    clock: Clock,
) -> None:
    print(f"Per shape on {cpu_name()}: GFLOP/s (median [min-max]) and GGUF weight bytes read per second")
    kernel_cols = "".join(f" {isa + ' GFLOP/s':>18} {'GB/s':>6} |" for isa in ISAS)
    ratio_col = f" {ISAS[-1] + '/' + ISAS[0]:>18} |" if len(ISAS) > 1 else ""
    header = (
        f"{'shape':20} {'M':>4} |{kernel_cols}{ratio_col} {'torch fp32 GFLOP/s':>18} "
        f"| {'decode+mm GFLOP/s':>18}"
    )
    print(header)
    print("-" * len(header))
    for m in batches:
        for name, ws in layers.items():
            w = ws[0]
            x = torch.randn(m, w.k)
            flops = 2.0 * m * w.n * w.k
            row = f"{name:20} {m:>4} |"
            t_kernels = []
            for isa in ISAS:
                calls = [
                    partial(quant_matmul_prepared, x, p, num_threads=threads, backend=isa)
                    for p in prepared[name]
                ]
                t_kernel = time_calls(cycle(calls), repeats, clock)
                t_kernels.append(t_kernel)
                row += f" {fmt_rate(flops, t_kernel):>18} {w.blocks.numel() / t_kernel.median / 1e9:6.1f} |"
            if len(ISAS) > 1:
                row += f" {t_kernels[0].median / t_kernels[-1].median:17.2f}x |"
            if dense:
                t_torch = time_calls(
                    cycle([partial(torch.matmul, x, d.t()) for d in dense[name]]), repeats, clock
                )
                packed = PackedWeight(w.qtype, (w.n, w.k), w.blocks)
                t_decode = time_calls(partial(dequantize_matmul, x, packed), max(3, repeats // 2), clock, 0.0)
                row += f" {fmt_rate(flops, t_torch):>18} | {fmt_rate(flops, t_decode):>18}"
            print(row, flush=True)


def decode_step(
    xs: dict[str, torch.Tensor], matmul: Callable[[torch.Tensor, str, int], object], lm_head: bool = True
) -> None:
    """The linears of one decode step: 30 x (qkv, o, gate|up, down), then the lm_head."""
    for i in range(NUM_LAYERS):
        for s in SHAPES:
            matmul(xs[s.name], s.name, i)
    if lm_head:
        matmul(xs[LM_HEAD.name], LM_HEAD.name, 0)


def bench_steps(
    layers: dict[str, list[RawWeight]],
    prepared: dict[str, list[PreparedQuantWeight]],
    dense: dict[str, list[torch.Tensor]],
    batches: list[int],
    threads: int,
    repeats: int,
    clock: Clock,
) -> None:
    print(
        f"Whole decode step on {cpu_name()}: 121 linear calls over all 30 layers' weights; tok/s = M / step time"
    )
    print(
        f"{'M':>4} | {'kernel':>12} | {'tok/s':>18} | {'no lm_head':>18} | {'vs ' + ISAS[0]:>8} | "
        f"{'torch fp32 tok/s':>18}"
    )

    def kernel_on(isa: str) -> Callable[[torch.Tensor, str, int], object]:
        def kernel(x: torch.Tensor, name: str, i: int) -> object:
            return quant_matmul_prepared(x, prepared[name][i], num_threads=threads, backend=isa)

        return kernel

    def fp32(x: torch.Tensor, name: str, i: int) -> object:
        return x @ dense[name][i].t()

    for m in batches:
        xs = {name: torch.randn(m, ws[0].k) for name, ws in layers.items()}
        step_repeats = repeats if m <= 32 else 3
        torch_col = (
            fmt_tok(m, time_calls(partial(decode_step, xs, fp32), step_repeats, clock, 0.0)) if dense else "-"
        )
        first: Timing | None = None
        for isa in ISAS:
            t_step = time_calls(partial(decode_step, xs, kernel_on(isa)), step_repeats, clock, 0.0)
            t_body = time_calls(
                partial(decode_step, xs, kernel_on(isa), lm_head=False), step_repeats, clock, 0.0
            )
            first = first or t_step
            print(
                f"{m:>4} | {isa:>12} | {fmt_tok(m, t_step):>18} | {fmt_tok(m, t_body):>18} | "
                f"{first.median / t_step.median:7.2f}x | {torch_col:>18}",
                flush=True,
            )


def bench_engine(threads: int, repeats: int, new_tokens: int) -> None:
    """Engine decode tok/s (every stream decoding, prompt lookup off) per kernel family: the default model is
    loaded once per family with EMBER_KERNEL_ISA set, and the families take turns within each repeat."""
    engines: dict[str, LLMEngine] = {}
    for isa in ISAS:
        os.environ[ISA_ENV] = isa  # read when the weights are prepared, i.e. during this load
        loaded = load_model(LoadConfig(None, "auto"))
        engines[isa] = LLMEngine(
            loaded,
            EngineConfig(
                cache=CacheConfig(block_size=16),
                scheduler=SchedulerConfig(
                    max_num_seqs=max(ENGINE_STREAMS), max_num_batched_tokens=512, max_model_len=2048
                ),
                speculation=SpeculationConfig(prompt_lookup="off"),
                kv_cache_gib=1.0,
            ),
        )
    os.environ.pop(ISA_ENV)
    prompts = PromptMaker(49152)
    for isa in ISAS:  # warm-up
        decode_throughput(engines[isa], prompts, 2, 8)
    print(
        f"Engine decode on {cpu_name()}, default model, {threads} threads, {new_tokens} tokens a stream, "
        f"median [min-max] of {repeats}; load average {load_text()}"
    )
    print(f"{'streams':>7} | {'kernel':>12} | {'tok/s':>16} | {'vs ' + ISAS[0]:>8} | cpu")
    for s in ENGINE_STREAMS:
        rates: dict[str, list[float]] = {isa: [] for isa in ISAS}
        for _ in range(repeats):
            for isa in ISAS:
                rates[isa].append(decode_throughput(engines[isa], prompts, s, new_tokens).tokens_per_s)
        base = statistics.median(rates[ISAS[0]])
        for isa in ISAS:
            med = statistics.median(rates[isa])
            spread = f"{med:6.0f} [{min(rates[isa]):.0f}-{max(rates[isa]):.0f}]"
            print(f"{s:>7} | {isa:>12} | {spread:>16} | {med / base:7.2f}x | {cpu_name()}", flush=True)
    print(f"load average {load_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", default="1,8,32,512")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-torch", action="store_true", help="time only the native kernel")
    parser.add_argument("--steps-only", action="store_true", help="skip the per-shape table")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help=Clock.__doc__)
    parser.add_argument(
        "--engine", action="store_true", help="also the engine's decode tok/s per kernel family"
    )
    parser.add_argument("--engine-only", action="store_true", help="only the engine's decode tok/s")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens a stream in the engine rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{cpu_name()}: kernel families {', '.join(ISAS)}; threads={args.threads} torch={torch.__version__}"
    )
    if args.engine_only:
        bench_engine(args.threads, args.repeats, args.new_tokens)
        return
    clock = Clock(args.clock, args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    reader = gguf.GGUFReader(default_gguf_path())
    layers = {s.name: [load_weights(reader, s, i) for i in range(NUM_LAYERS)] for s in SHAPES}
    layers[LM_HEAD.name] = [load_weights(reader, LM_HEAD, 0)]
    prepared = {
        name: [prepare_weight(w.blocks, w.qtype, w.n, w.k) for w in ws] for name, ws in layers.items()
    }
    dense: dict[str, list[torch.Tensor]] = {}
    if not args.skip_torch:
        dense = {
            name: [dequantize_blocks(w.blocks, w.qtype, w.n, w.k) for w in ws] for name, ws in layers.items()
        }

    print(f"load average at start: {load_text()}")
    if not args.steps_only:
        bench_shapes(layers, prepared, dense, batches, args.threads, args.repeats, clock)
        print()
    bench_steps(layers, prepared, dense, batches, args.threads, args.repeats, clock)
    if args.engine:
        print()
        bench_engine(args.threads, args.repeats, args.new_tokens)
    print(f"load average at end: {load_text()}")


if __name__ == "__main__":
    main()
