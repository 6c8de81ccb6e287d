"""Q5_0 on its own kernel vs the Q8_0 stand-in it replaced, on Qwen2.5-Coder-0.5B's linear shapes (whose 896-wide
rows a Q4_K_M file stores as Q5_0).

Per shape (n outputs x k inputs) and batch size M: microseconds per matmul and GB/s of weight bytes read, for each
kernel family this CPU runs. Each call takes the next of enough copies of the weight (~96 MB of Q8_0) that none
is cache-hot, as in a decode step. Medians over repeats with the [min, max] spread; CPU and load printed beside.

    .venv/bin/python benchmarks/bench_q5_kernels.py [--threads 1] [--batches 1,8] [--repeats 7] [--clock cpu]
"""

from __future__ import annotations

import argparse
from functools import partial

import gguf
import numpy as np
import torch
from bench_kernels import Clock, Timing, cycle, load_text, time_calls
from gguf import quants

from ember.bench.machine import cpu_name
from ember.kernels import prepare_weight, quant_matmul_prepared, supported_isas_here

# (name, n, k): q / o, k / v, gate / up, down of Qwen2.5-0.5B (hidden 896, 2 kv heads of 64, intermediate 4864).
SHAPES = (("q|o 896x896", 896, 896), ("k|v 128x896", 128, 896), ("gate|up 4864x896", 4864, 896),
          ("down 896x4864", 896, 4864))  # fmt: skip
COLD_BYTES = 96 << 20  # copies of a weight cycled through, in Q8_0 bytes: past this CPU's L3


def fmt(t: Timing, nbytes: int) -> str:
    return f"{t.median * 1e6:8.1f} [{t.low * 1e6:.0f}-{t.high * 1e6:.0f}] {nbytes / t.median / 1e9:5.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = Clock(args.clock, args.threads)
    isas = [isa for isa in supported_isas_here() if isa != "scalar"]
    rng = np.random.default_rng(0)
    print(f"{cpu_name()}, load {load_text()}, {args.threads} thread(s), {args.clock} clock")
    print("us per matmul (median [min-max]) and weight GB/s; Q5_0 own kernel vs the Q8_0 stand-in")
    header = f"{'shape':18} {'M':>3} {'isa':12} | {'Q5_0 us':>8} {'[spread]':>11} {'GB/s':>5} | " + (
        f"{'Q8_0 us':>8} {'[spread]':>11} {'GB/s':>5} | {'Q8_0/Q5_0':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, n, k in SHAPES:
        values = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        blocks = {
            q: torch.from_numpy(quants.quantize(values, gguf.GGMLQuantizationType[q]))
            for q in ("Q5_0", "Q8_0")
        }
        copies = max(2, COLD_BYTES // blocks["Q8_0"].numel())
        for isa in isas:
            weights = {
                q: [prepare_weight(b.clone(), q, n, k) for _ in range(copies)] for q, b in blocks.items()
            }
            for m in [int(b) for b in args.batches.split(",")]:
                x = torch.randn(m, k)
                timings = {
                    q: time_calls(
                        cycle(
                            [
                                partial(quant_matmul_prepared, x, w, num_threads=args.threads, backend=isa)
                                for w in ws
                            ]
                        ),  # fmt: skip
                        args.repeats,
                        clock,
                    )
                    for q, ws in weights.items()
                }
                print(
                    f"{name:18} {m:>3} {isa:12} | {fmt(timings['Q5_0'], blocks['Q5_0'].numel())} | "
                    f"{fmt(timings['Q8_0'], blocks['Q8_0'].numel())} | "
                    f"{timings['Q8_0'].median / timings['Q5_0'].median:8.2f}x",
                    flush=True,
                )
            del weights


if __name__ == "__main__":
    main()
