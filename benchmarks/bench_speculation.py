"""Speculative decoding on vs off, same run, default model (SmolLM2-135M-Instruct, GGUF Q4_1), greedy.

Workloads (issue #17): a code edit with the original code as the prediction (Predicted Outputs; asked two
ways, the second of which gets a code-only reply), an extract-with-quotes task with n-gram prompt lookup, an
open-ended story (lookup on 'auto', nothing to find), and 32 concurrent streams (aggregate throughput: the scheduling rule keeps them from drafting). One-stream
figures are decode tok/s: output tokens after the first, over the time after the first token. Each workload
alternates off / on `--repeats` times and reports medians; the outputs must be identical.

    .venv/bin/python benchmarks/bench_speculation.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass

from ember.bench.machine import cpu_name
from ember.engine.engine_config import CacheConfig, EngineConfig, SchedulerConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.speculation.config import SpeculationConfig, SpeculationParams
from ember.models.loader import LoadConfig, load_model
from ember.threads import configure_torch_threads

CODE = '''def summarize_orders(orders, tax_rate, discount_threshold):
    """Total, average and discounted figures for a list of orders."""
    x = 0
    count = 0
    largest = None
    for order in orders:
        price = order["price"] * order["quantity"]
        if price > discount_threshold:
            price = price * 0.9
        x = x + price
        count = count + 1
        if largest is None or price > largest:
            largest = price
    if count == 0:
        return {"total": 0, "average": 0, "largest": 0, "tax": 0}
    average = x / count
    tax = x * tax_rate
    report = {
        "total": round(x, 2),
        "average": round(average, 2),
        "largest": round(largest, 2),
        "tax": round(tax, 2),
        "total_with_tax": round(x + tax, 2),
    }
    if x > 1000:
        report["tier"] = "gold"
    elif x > 500:
        report["tier"] = "silver"
    else:
        report["tier"] = "bronze"
    return report
'''

DOCUMENT = (
    "The harbour town of Wensley lies at the mouth of the river Aln. Its fishing fleet once numbered two "
    "hundred boats. In 1851 the railway reached the town, and the first visitors arrived from the cities. "
    "The old lighthouse was built in 1790 and still guides ships past the northern rocks. Every summer the "
    "town holds a regatta, and the harbour fills with sailing boats from all along the coast. The market "
    "square is surrounded by stone houses that were built by the merchants who traded wool and salt. The "
    "museum in the old customs house tells the story of the smugglers who used the caves below the cliffs. "
    "Today most people in Wensley work in tourism, and the fleet has only twelve boats."
)


@dataclass(frozen=True)
class Task:
    name: str
    user: str
    max_tokens: int
    prediction: str | None = None


TASKS = (
    Task(
        "code edit (prediction)",
        f"Rename the variable x to total in this code. Reply with the code only.\n\n{CODE}",
        400,
        CODE,
    ),
    # The same edit asked the way OpenAI's Predicted Outputs guide asks it (code first, then the instruction):
    # the default model then replies with code alone, where the wording above gets ~120 tokens of prose around
    # the code that no prediction holds.
    Task(
        "code edit, code-only reply",
        f"{CODE}\nRewrite this code with the variable x renamed to total. Output the full code only.",
        400,
        CODE,
    ),
    Task(
        "extract with quotes (n-gram)",
        f"{DOCUMENT}\n\nCopy every sentence of the text above that mentions a year, word for word, one per line.",
        160,
    ),
    Task("story (n-gram auto)", "Write a long story about a dragon who learns to bake bread.", 200),
)


def chat_prompt(engine: LLMEngine, user: str) -> list[int]:
    text = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
    return engine.tokenizer.encode(text)


def one_stream(
    engine: LLMEngine, prompt: list[int], params: SamplingParams, rid: str
) -> tuple[float, list[int], int]:
    """Decode tok/s after the first token, the output, and the draft tokens accepted."""
    engine.add_request(rid, prompt, params)
    first = None
    final = None
    while engine.has_unfinished():
        for out in engine.step():
            if first is None and out.outputs[0].token_ids:
                first = (time.perf_counter(), len(out.outputs[0].token_ids))
            if out.finished:
                final = out
    end = time.perf_counter()
    assert final is not None and first is not None
    tokens = final.outputs[0].token_ids
    return (len(tokens) - first[1]) / (end - first[0]), tokens, final.accepted_prediction_tokens


def aggregate(engine: LLMEngine, prompts: list[list[int]], max_tokens: int, tag: str) -> float:
    """Aggregate output tok/s of all streams from the first step on."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", prompt, params)
    generated = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        generated += sum(len(o.outputs[0].delta_token_ids) for o in engine.step())
    return generated / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_torch_threads(args.threads)
    loaded = load_model(LoadConfig(None, "auto"))
    base = EngineConfig(
        cache=CacheConfig(block_size=16),
        scheduler=SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=512, max_model_len=2048),
        kv_cache_gib=0.5,
    )
    engines = {
        "off": LLMEngine(
            loaded, dataclasses.replace(base, speculation=SpeculationConfig(prompt_lookup="off"))
        ),
        "on": LLMEngine(
            loaded, dataclasses.replace(base, speculation=SpeculationConfig(prompt_lookup="auto"))
        ),
    }
    for engine in engines.values():
        engine.scheduler.block_manager.enable_prefix_caching = False  # every run pays its own prefill
    print(
        f"CPU: {cpu_name()}, {args.threads} threads; model {loaded.name}; greedy; medians of {args.repeats}"
    )
    rows = []
    for task in TASKS:
        prompt = chat_prompt(engines["off"], task.user)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        outputs: dict[str, list[int]] = {}
        accepted = 0
        for r in range(args.repeats):
            for mode, engine in engines.items():
                spec = None
                if mode == "on" and task.prediction is not None:
                    spec = SpeculationParams(
                        prediction_token_ids=tuple(engine.tokenizer.encode(task.prediction))
                    )
                params = SamplingParams(max_tokens=task.max_tokens, temperature=0.0, speculation=spec)
                rate, tokens, accepted_now = one_stream(engine, prompt, params, f"{task.name}-{mode}-{r}")
                rates[mode].append(rate)
                outputs[mode] = tokens
                if mode == "on":
                    accepted = accepted_now
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        same = "yes" if outputs["off"] == outputs["on"] else "NO"
        rows.append(
            (
                task.name,
                off,
                on,
                f"{len(outputs['on'])} tokens, {accepted} accepted drafts, identical: {same}",
            )
        )
    prompts = [
        chat_prompt(engines["off"], f"Tell story number {i} about a cat and a lighthouse.") for i in range(32)
    ]
    agg: dict[str, list[float]] = {"off": [], "on": []}
    drafts_before = engines["on"].stats.spec_decode_num_drafts
    for r in range(args.repeats):
        for mode, engine in engines.items():
            agg[mode].append(aggregate(engine, prompts, 64, f"agg-{mode}-{r}"))
    # only this workload's drafts: the one-stream tasks above drafted on the same engine
    drafts = engines["on"].stats.spec_decode_num_drafts - drafts_before
    rows.append(
        (
            "32 streams, aggregate",
            statistics.median(agg["off"]),
            statistics.median(agg["on"]),
            f"{drafts} drafts in these runs",
        )
    )
    print(f"{'workload':32} {'off tok/s':>10} {'on tok/s':>10} {'on/off':>7}  notes")
    for name, off, on, note in rows:
        print(f"{name:32} {off:10.1f} {on:10.1f} {on / off:6.2f}x  {note}")


if __name__ == "__main__":
    main()
