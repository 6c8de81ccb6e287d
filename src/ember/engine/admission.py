"""Admitting a generation request, all or nothing: every check that can refuse it (its budget, token ids in the
vocabulary, its grammar, queue room, its adapter) comes before anything is registered, and what admission
takes (adapter pins) is given back if a later part fails, so a refusal is the caller's ValueError (an HTTP 400)
or QueueFullError (429) and leaves no trace in the scheduler, the runner, the block manager or the adapter
registry. The sampler would otherwise meet a bad id only at the request's first step."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ember.engine.errors import QueueFullError
from ember.engine.outputs import RequestMetrics
from ember.engine.request import Request, fan_out
from ember.engine.sampling_params import SamplingParams
from ember.engine.speculation.config import DraftSettings
from ember.engine.speculation.drafter import SequenceDrafter

if TYPE_CHECKING:
    from ember.engine.llm_engine import LLMEngine


def ids_outside(token_ids: list[int], vocab_size: int) -> bool:
    """Whether any id is outside [0, vocab_size): min and max run in C, a Python loop per id would not."""
    return bool(token_ids) and (min(token_ids) < 0 or max(token_ids) >= vocab_size)


def check_ids_in_vocabulary(prompt_token_ids: list[int], params: SamplingParams, vocab_size: int) -> None:
    if ids_outside(prompt_token_ids, vocab_size):
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    outside = [t for t in params.logit_bias if t < 0 or t >= vocab_size]
    if outside:
        raise ValueError(f"logit_bias token id {outside[0]} is outside the vocabulary [0, {vocab_size})")


def admit_request(
    engine: LLMEngine,
    request_id: str,
    prompt_token_ids: list[int],
    params: SamplingParams,
    *,
    lora_id: str | None,
    cache_salt: str | None,
    priority: int,
    arrival_time: float | None,
) -> Request:
    """The request with its sequences queued in the scheduler and its adapter pinned; the engine registers it."""
    max_tokens = engine.resolve_max_tokens(len(prompt_token_ids), params)
    check_ids_in_vocabulary(prompt_token_ids, params, engine.model.config.vocab_size)
    # Compiled before anything is admitted: an invalid schema or grammar is the caller's ValueError.
    grammar = None if params.structured is None else engine.grammar_compiler.compile(params.structured)
    # How this request drafts (speculative decoding): the server's settings with the request's overrides.
    draft_settings = DraftSettings.resolve(engine.config.speculation, params.speculation)
    if ids_outside(list(draft_settings.prediction_token_ids), engine.model.config.vocab_size):
        raise ValueError(f"prediction token ids must be in [0, {engine.model.config.vocab_size})")
    count = params.num_samples
    room = engine.config.scheduler.max_waiting - engine.scheduler.num_waiting
    if count > room:  # all samples or none: a half-admitted request could never be answered
        raise QueueFullError(engine.scheduler.num_waiting)
    if lora_id is not None and lora_id not in engine.lora_manager:
        known = ", ".join(info.name for info in engine.lora_manager.list_adapters()) or "none"
        raise ValueError(f"unknown LoRA adapter {lora_id!r} (registered: {known})")
    # The request pins its adapter once per sequence until it leaves the engine (_take_output); the key
    # names this registration in the prefix cache and tells the runner which adapter the rows run with.
    lora_keys: list[str | None] = []
    try:
        for _ in range(count):  # acquiring loads an evicted adapter from its folder, which may fail
            lora_keys.append(None if lora_id is None else engine.lora_manager.acquire(lora_id))
        request = fan_out(
            request_id,
            prompt_token_ids,
            params,
            metrics=RequestMetrics(arrival_time=arrival_time if arrival_time is not None else time.time()),
            max_tokens=max_tokens,
            lora_keys=lora_keys,
            grammar=grammar,
            cache_salt=cache_salt,
            priority=priority,
            tokenizer=engine.tokenizer,
            eos_token_ids=engine.eos_token_ids,
        )
        for state in request.sequences:  # each sample reads the prediction along its own output
            state.sequence.drafter = SequenceDrafter.for_settings(draft_settings)
        # All samples or none; the first runs first, so the rest find its prompt blocks in the prefix cache.
        engine.scheduler.add_sequences([state.sequence for state in request.sequences])
    except BaseException:
        for key in lora_keys:
            if key is not None:
                engine.lora_manager.release(key)
        raise
    return request
