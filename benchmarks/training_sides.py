"""The two sides of bench_training.py, each a worker process that trains one step when told to.

A worker loads its model, answers {"ready": ...} on stdout, then reads one JSON command a line from stdin:
{"step": [example indices]} trains one optimizer step on those examples and answers {"seconds", "loss",
"trained_tokens"}; {"quit": true} answers {"peak_rss_mb"} (ru_maxrss of the worker: model loading included) and
exits. While a worker waits for its next command it is blocked on a read, so the side that runs has the cores to
itself (apart from the machine's other load, which hits both sides alike when their steps alternate).

ember's side runs `LoraTrainer.train`, the training worker's own loop, and holds it between steps in its
`should_stop` callback; the batches that loop plans (plan_batches with seed + epoch) are the ones the driver
sends the PEFT side, and each answer carries the step's trained-token count so the driver can check that.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RANK, ALPHA, LEARNING_RATE, SEED = 8, 16.0, 1e-3, 0
BATCH_TOKENS = 8192  # one micro-batch a step on both sides: no gradient accumulation on either
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SIDES = {
    "ember": "ember (default)",
    "ember-fp32": "ember, fp32 matmuls",
    "ember-full-logits": "ember, full logits",
    "peft": "PEFT + transformers",
}


def send(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def receive() -> dict[str, Any]:
    line = sys.stdin.readline()
    return json.loads(line) if line else {"quit": True}  # the driver went away: stop


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_case(case_file: Path) -> tuple[dict[str, Any], list[Any]]:
    """The case's settings and its tokenized examples, as the driver wrote them."""
    from ember.tuning.masking import TokenizedExample

    case = json.loads(case_file.read_text())
    examples = [TokenizedExample(e["input_ids"], e["loss_weights"], e["row_index"]) for e in case["examples"]]
    return case, examples


def trainer_config(side: str, batch_examples: int, epochs: int) -> Any:
    """ember's TrainerConfig for a side: the defaults, but a constant learning rate (as the PEFT loop) and
    `batch_examples` examples a step; "ember-fp32" forces exact base matmuls, "ember-full-logits" also computes
    a whole batch's logits at once without activation checkpointing."""
    from ember.tuning.trainer_config import TrainerConfig

    extra: dict[str, Any] = {}
    if side != "ember":
        extra["base_matmul_dtype"] = "fp32"
    if side == "ember-full-logits":
        extra.update(loss_chunk_tokens=BATCH_TOKENS, activation_checkpoint_min_tokens=None)
    return TrainerConfig(
        **extra,
        epochs=epochs,
        learning_rate=LEARNING_RATE,
        lr_schedule="constant",
        batch_tokens=BATCH_TOKENS,
        batch_examples=batch_examples,
        max_context_length=BATCH_TOKENS,
        seed=SEED,
    )


def run_ember(side: str, case: dict[str, Any], examples: list[Any]) -> None:
    from ember.tuning.jobs import load_training_model
    from ember.tuning.trainer import LoraTrainer, TrainingCallbacks, TrainingCancelled, TrainingMetrics
    from ember.tuning.trainer_config import LoraSettings

    model = load_training_model(case["model"])
    config = trainer_config(side, case["batch_examples"], case["epochs"])
    trainer = LoraTrainer(model, LoraSettings(RANK, ALPHA, 0.0, MODULES), config, model.name)
    started = [0.0]
    trained_before = [0]
    quit_seen = [False]

    def next_step() -> bool:  # should_stop: wait for the driver's next command
        command = receive()
        if "quit" in command:
            quit_seen[0] = True
            return True
        started[0] = time.perf_counter()
        return False

    def step_done(metrics: TrainingMetrics) -> None:
        seconds = time.perf_counter() - started[0]
        trained = metrics.trained_tokens - trained_before[0]
        trained_before[0] = metrics.trained_tokens
        send({"seconds": seconds, "loss": metrics.train_loss, "trained_tokens": trained})

    send({"ready": True})
    callbacks = TrainingCallbacks(on_metrics=step_done, should_stop=next_step)
    try:
        trainer.train(examples, [], callbacks=callbacks)
    except TrainingCancelled:
        pass
    if not quit_seen[0]:
        receive()  # every planned step ran: the driver's quit is still to come
    send({"peak_rss_mb": peak_rss_mb()})


def peft_step_function(model_path: str, examples: list[Any]) -> Callable[[list[int]], tuple[float, int]]:
    """A plain PEFT + transformers training step on the examples at given indices: (loss, trained tokens).

    The model loads as transformers loads it by default (fp32; a GGUF dequantized to fp32); rows are padded to
    the longest with an attention mask and -100 labels on untrained and pad positions, so the loss is the mean
    cross-entropy over the trained tokens, as ember's."""
    import peft
    from transformers import AutoModelForCausalLM

    path = Path(model_path)
    if path.is_file():
        base = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    lora = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(MODULES))
    model = peft.get_peft_model(base, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # ember's defaults: AdamW without weight decay, gradients clipped to norm 1
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0)

    def step(indices: list[int]) -> tuple[float, int]:
        rows = [examples[i] for i in indices]
        width = max(e.num_tokens for e in rows)
        ids = torch.full((len(rows), width), 2, dtype=torch.int64)  # [B, W]
        mask = torch.zeros((len(rows), width), dtype=torch.int64)  # [B, W]
        labels = torch.full((len(rows), width), -100, dtype=torch.int64)  # [B, W]
        for r, example in enumerate(rows):
            n = example.num_tokens
            ids[r, :n] = torch.tensor(example.input_ids)
            mask[r, :n] = 1
            trained = torch.tensor(example.loss_weights) > 0  # [n]
            labels[r, :n] = torch.where(trained, ids[r, :n], torch.tensor(-100))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), sum(e.num_trained_tokens for e in rows)

    return step


def run_peft(case: dict[str, Any], examples: list[Any]) -> None:
    step = peft_step_function(case["model"], examples)
    send({"ready": True})
    while "quit" not in (command := receive()):
        started = time.perf_counter()
        loss, trained = step(command["step"])
        send({"seconds": time.perf_counter() - started, "loss": loss, "trained_tokens": trained})
    send({"peak_rss_mb": peak_rss_mb()})


def run_worker(side: str, case_file: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    case, examples = load_case(case_file)
    if side == "peft":
        run_peft(case, examples)
    else:
        run_ember(side, case, examples)
