"""One decode step's weight GEMMs (M = 1) of a model file on one thread, timed in this process's CPU time: a figure
that holds on a shared machine where the 2-thread wall-clock decode rows swing 1.5x between runs.

Run it on two builds (e.g. before / after a kernel change, the other one via PYTHONPATH) in turns.

    .venv/bin/python benchmarks/bench_gemm_step.py --model /work/qwen/qwen2.5-coder-0.5b-q4_k_m.gguf [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

from ember import kernels
from ember.bench.gemm_only import linear_modules
from ember.bench.machine import cpu_name, load_average
from ember.models.loader import LoadConfig, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    network = load_model(LoadConfig(args.model)).network
    modules = linear_modules(network)
    inputs = [torch.randn(1, m.in_features) for m in modules]  # [1, in] per linear
    formats = Counter(getattr(m, "qtype", "fp32") for m in modules)
    times = []
    with torch.inference_mode():
        for m, x in zip(modules, inputs, strict=True):  # warm-up
            m(x)
        for _ in range(args.repeats):
            start = time.process_time()
            for _ in range(5):
                for m, x in zip(modules, inputs, strict=True):
                    m(x)
            times.append((time.process_time() - start) / 5)
    print(
        f"{cpu_name()}, load {load_average()}, 1 thread, {kernels.chosen_isa()}, {dict(formats)}: step GEMMs "
        f"{statistics.median(times) * 1e3:.2f} ms [{min(times) * 1e3:.2f}-{max(times) * 1e3:.2f}] CPU time"
    )


if __name__ == "__main__":
    main()
