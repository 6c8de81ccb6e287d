"""`ember bench --speculation`: speculative decoding on vs off in one run, greedy, on two engines that share one
loaded model (issue #17).

One-stream figures are decode tok/s: output tokens after the first, over the time after the first token, so the
prefill (the same either way) does not dilute the ratio. Each workload alternates off / on `repeats` times and
reports medians; every run's output, off or on, must be the same (greedy verification keeps exactly the tokens
plain decoding would have chosen). The 32-stream row is aggregate tok/s, where the scheduling rule keeps streams from drafting.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

from ember.bench.machine import cpu_name
from ember.bench.report import print_aligned
from ember.bench.speculation_tasks import TASKS, Task
from ember.engine.engine_config import CacheConfig, EngineConfig, SchedulerConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.speculation.config import SpeculationConfig, SpeculationParams
from ember.models.loader import LoadedModel
from ember.server.common.prompts import PromptEncoder

AGGREGATE_STREAMS = 32
AGGREGATE_TOKENS = 64


@dataclass(frozen=True)
class SpeculationRow:
    workload: str
    off: float  # tok/s without speculation (median)
    on: float  # tok/s with it (median)
    target: str
    notes: str

    @property
    def ratio(self) -> float:
        return self.on / self.off


@dataclass(frozen=True)
class StreamRun:
    rate: float  # decode tok/s after the first token
    tokens: list[int]
    accepted: int  # drafted tokens the verification kept


class Prompts:
    """Chat prompts through the model's own template, built by `ember serve`'s own PromptEncoder."""

    def __init__(self, loaded: LoadedModel) -> None:
        tokenizer = loaded.tokenizer
        self._encoder = PromptEncoder(tokenizer, loaded.config.vocab_size, loaded.chat_template)  # type: ignore[arg-type]
        self.decode = tokenizer.decode  # type: ignore[attr-defined]

    def chat(self, user: str) -> list[int]:
        if self._encoder.template is None:  # a base model: the request as a plain prompt
            return self._encoder.encode_text(user, "prompt")
        return self._encoder.encode_chat(self._encoder.render_chat([{"role": "user", "content": user}]))

    def text(self, text: str) -> tuple[int, ...]:
        return tuple(self._encoder.tokenizer.encode(text, add_special_tokens=False))


def one_stream(engine: LLMEngine, prompt: list[int], params: SamplingParams, request_id: str) -> StreamRun:
    engine.add_request(request_id, prompt, params)
    first: tuple[float, int] | None = None
    final = None
    while engine.has_unfinished():
        for out in engine.step():
            if first is None and out.outputs[0].token_ids:
                first = (time.perf_counter(), len(out.outputs[0].token_ids))
            if out.finished:
                final = out
    end = time.perf_counter()
    assert final is not None and first is not None
    tokens = list(final.outputs[0].token_ids)
    after_first = len(tokens) - first[1]
    rate = after_first / (end - first[0]) if after_first else 0.0
    return StreamRun(rate, tokens, final.accepted_prediction_tokens)


def aggregate(engine: LLMEngine, prompts: list[list[int]], tag: str) -> float:
    """Aggregate output tok/s of all streams from the first step on."""
    params = SamplingParams(max_tokens=AGGREGATE_TOKENS, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", prompt, params)
    generated = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        generated += sum(len(o.outputs[0].delta_token_ids) for o in engine.step())
    return generated / (time.perf_counter() - start)


def _engines(loaded: LoadedModel) -> dict[str, LLMEngine]:
    base = EngineConfig(
        cache=CacheConfig(block_size=16),
        scheduler=SchedulerConfig(
            max_num_seqs=AGGREGATE_STREAMS, max_num_batched_tokens=512, max_model_len=2048
        ),
        kv_cache_gib=0.5,
    )
    engines = {
        mode: LLMEngine(
            loaded, dataclasses.replace(base, speculation=SpeculationConfig(prompt_lookup=lookup))
        )
        for mode, lookup in (("off", "off"), ("on", "auto"))
    }
    for engine in engines.values():
        engine.scheduler.block_manager.enable_prefix_caching = False  # every run pays its own prefill
    return engines


def _task_row(engines: dict[str, LLMEngine], prompts: Prompts, task: Task, repeats: int) -> SpeculationRow:
    prompt = prompts.chat(task.user)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    last: dict[str, StreamRun] = {}
    outputs: set[tuple[int, ...]] = set()  # every run's output, off and on: one, when speculation is exact
    for r in range(repeats):
        for mode, engine in engines.items():
            spec = None
            if mode == "on" and task.prediction is not None:
                spec = SpeculationParams(prediction_token_ids=prompts.text(task.prediction))
            params = SamplingParams(max_tokens=task.max_tokens, temperature=0.0, speculation=spec)
            run = one_stream(engine, prompt, params, f"{task.name}-{mode}-{r}")
            rates[mode].append(run.rate)
            last[mode] = run
            outputs.add(tuple(run.tokens))
    same = "yes" if len(outputs) == 1 else "NO"
    notes = f"{len(last['on'].tokens)} tokens, {last['on'].accepted} drafted tokens kept, identical: {same}"
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return SpeculationRow(task.name, off, on, task.target, notes)


def measure_speculation(loaded: LoadedModel, repeats: int) -> list[SpeculationRow]:
    engines = _engines(loaded)
    prompts = Prompts(loaded)
    rows = [_task_row(engines, prompts, task, repeats) for task in TASKS]
    stream_prompts = [
        prompts.chat(f"Tell story number {i} about a cat and a lighthouse.") for i in range(AGGREGATE_STREAMS)
    ]
    agg: dict[str, list[float]] = {"off": [], "on": []}
    drafts_before = engines["on"].stats.spec_decode_num_drafts
    for r in range(repeats):
        for mode, engine in engines.items():
            agg[mode].append(aggregate(engine, stream_prompts, f"agg-{mode}-{r}"))
    # only this workload's drafts: the one-stream tasks above drafted on the same engine
    drafts = engines["on"].stats.spec_decode_num_drafts - drafts_before
    rows.append(
        SpeculationRow(
            f"{AGGREGATE_STREAMS} streams, aggregate",
            statistics.median(agg["off"]),
            statistics.median(agg["on"]),
            ">= 0.97x",
            f"{drafts} drafts in these runs",
        )
    )
    return rows


def print_speculation_table(
    rows: list[SpeculationRow], loaded: LoadedModel, threads: int, repeats: int
) -> None:
    print(
        f"\nspeculative decoding (engine, greedy, medians of {repeats}): CPU {cpu_name()}, {threads} threads, "
        f"model {loaded.name}"
    )
    header = ("workload", "off tok/s", "on tok/s", "on/off", "target", "notes")
    lines = [header] + [
        (r.workload, f"{r.off:.1f}", f"{r.on:.1f}", f"{r.ratio:.2f}x", r.target, r.notes) for r in rows
    ]
    print_aligned(lines)
