"""The synchronous engine: add requests, then step() = schedule, run the batch, post-process."""

from __future__ import annotations

import dataclasses
import logging
import time

from ember.engine.detokenizer import IncrementalDetokenizer
from ember.engine.engine_config import CacheConfig, EngineConfig, SchedulerConfig
from ember.engine.errors import QueueFullError
from ember.engine.generation_budget import resolve_max_tokens
from ember.engine.model_runner import ModelRunner, ModelRunnerOutput
from ember.engine.outputs import RequestMetrics, RequestOutput
from ember.engine.request import Request, SequenceOutputState
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import Scheduler
from ember.engine.scheduler_output import SchedulerOutput
from ember.engine.sequence import Sequence, SequenceStatus
from ember.engine.stats import EngineStats, StepTimer
from ember.engine.stop_checker import StopChecker
from ember.lora.adapter import LoraAdapter
from ember.lora.manager import LoraInfo, LoraManager
from ember.models.kv_cache import allocate_kv_caches, kv_bytes_per_block
from ember.models.loader import LoadedModel
from ember.structured.compiler import GrammarCompiler
from ember.structured.matcher import GrammarMatcher
from ember.threads import ThreadGovernor

logger = logging.getLogger(__name__)

_FINISH_STATUS = {
    "stop": SequenceStatus.FINISHED_STOPPED,
    "length": SequenceStatus.FINISHED_LENGTH,
    "abort": SequenceStatus.FINISHED_ABORTED,
    "error": SequenceStatus.FINISHED_ERROR,
}


def child_sequence_id(request_id: str, index: int, count: int) -> str:
    return request_id if count == 1 else f"{request_id}#{index}"


def child_seed(seed: int, index: int) -> int:
    """Distinct, reproducible streams for the n samples of one seeded request."""
    return (seed * 1_000_003 + index) % (2**63)


class LLMEngine:
    def __init__(self, model: LoadedModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.tokenizer = model.tokenizer
        mc = model.config
        self.max_model_len = min(config.scheduler.max_model_len, mc.max_position_embeddings)
        cache_cfg = config.cache
        num_blocks = cache_cfg.num_blocks
        dtype = next(p.dtype for p in model.network.parameters() if p.is_floating_point())
        if num_blocks == 0:
            per_block = kv_bytes_per_block(mc, cache_cfg.block_size, dtype)
            num_blocks = max(2, int(config.kv_cache_gib * 2**30) // per_block)
        self.num_blocks = num_blocks
        self.block_size = cache_cfg.block_size
        kv_caches = allocate_kv_caches(mc, num_blocks, cache_cfg.block_size, dtype, model.device)
        eos = tuple(dict.fromkeys(model.generation.eos_token_ids + tuple(self.tokenizer.eos_token_ids)))
        self.eos_token_ids = eos
        self.grammar_compiler = GrammarCompiler(self.tokenizer, eos)
        self.lora_manager = LoraManager(
            config.lora.max_loaded,
            mc,
            base_model_name=model.name,
            strict_base_model=config.lora.strict_base_model,
            device=model.device,
            dtype=dtype,
        )
        for name, path in config.lora.adapters:
            self.lora_manager.register(name, path)
        self.runner = ModelRunner(
            model.network, kv_caches, cache_cfg.block_size, model.device, eos, self.lora_manager
        )
        self.scheduler = Scheduler(
            SchedulerConfig(**{**config.scheduler.__dict__, "max_model_len": self.max_model_len}),
            CacheConfig(**{**cache_cfg.__dict__, "num_blocks": num_blocks}),
        )
        self.requests: dict[str, Request] = {}
        self.sequences: dict[str, SequenceOutputState] = {}
        self.stats = EngineStats()
        self.timer = StepTimer()
        self.thread_governor = (
            ThreadGovernor(config.adapt_threads, self.runner.num_threads())
            if config.adapt_threads > 0
            else None
        )

    # ---- requests in ----------------------------------------------------------------------------------

    def resolve_max_tokens(self, prompt_len: int, params: SamplingParams) -> int:
        """The request's generation budget (GenerationBudgetError, a ValueError, when the prompt leaves no room);
        params.max_tokens is a cap, cut to the context left."""
        return resolve_max_tokens(prompt_len, params.max_tokens, self.max_model_len)

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        lora_id: str | None = None,
        cache_salt: str | None = None,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        max_tokens = self.resolve_max_tokens(len(prompt_token_ids), params)
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        # Compiled before anything is admitted: an invalid schema or grammar is the caller's ValueError.
        grammar = None if params.structured is None else self.grammar_compiler.compile(params.structured)
        now = arrival_time if arrival_time is not None else time.time()
        request = Request(request_id, list(prompt_token_ids), params, RequestMetrics(arrival_time=now))
        if params.prompt_logprobs is not None:
            request.prompt_logprobs = [None] * len(prompt_token_ids)
        count = params.num_samples
        # best_of ranks samples by cumulative logprob, so its sequences track logprobs even if not reported.
        seq_params = params
        if count > params.n and params.logprobs is None:
            seq_params = dataclasses.replace(params, logprobs=0)
        room = self.config.scheduler.max_waiting - self.scheduler.num_waiting
        if count > room:  # all samples or none: a half-admitted request could never be answered
            raise QueueFullError(self.scheduler.num_waiting)
        if lora_id is not None and lora_id not in self.lora_manager:
            known = ", ".join(info.name for info in self.lora_manager.list_adapters()) or "none"
            raise ValueError(f"unknown LoRA adapter {lora_id!r} (registered: {known})")
        # Each sequence pins the adapter until it finishes; the key names this registration in the prefix cache.
        lora_keys = [None if lora_id is None else self.lora_manager.acquire(lora_id) for _ in range(count)]
        try:
            for index in range(count):
                sequence = Sequence(
                    sequence_id=child_sequence_id(request_id, index, count),
                    prompt_token_ids=list(prompt_token_ids),
                    sampling_params=seq_params,
                    arrival_time=now,
                    priority=priority,
                    lora_key=lora_keys[index],
                    cache_salt=cache_salt,
                    max_tokens=max_tokens,
                )
                state = SequenceOutputState(
                    sequence=sequence,
                    request_id=request_id,
                    index=index,
                    detokenizer=IncrementalDetokenizer(
                        self.tokenizer, prompt_token_ids, params.skip_special_tokens
                    ),
                    stop_checker=StopChecker(params, self.eos_token_ids, max_tokens),
                    logprobs=[] if seq_params.logprobs is not None else None,
                )
                request.sequences.append(state)
        except BaseException:
            for key in lora_keys:
                if key is not None:
                    self.lora_manager.release(key)
            raise
        # Admit the first sample before the rest, so they find its prompt blocks in the prefix cache.
        for state in request.sequences:
            self.scheduler.add_sequence(state.sequence)
            self.sequences[state.sequence.sequence_id] = state
            if params.seed is not None:
                self.runner.register_seed(state.sequence.sequence_id, child_seed(params.seed, state.index))
            if grammar is not None:
                matcher = GrammarMatcher(self.grammar_compiler.grammar_tokenizer, grammar)
                self.runner.register_matcher(state.sequence.sequence_id, matcher)
        self.requests[request_id] = request

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stops every sequence of the request and frees its KV blocks at once."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        for state in request.sequences:
            if state.finish_reason is None:
                self._finish(state, "abort", None)
        output = self._output(request)
        self._check_when_idle()
        return output

    def fail_request(self, request_id: str, message: str) -> RequestOutput | None:
        """Ends the request with an error; its blocks leave the prefix cache, as their KV may be incomplete."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        request.error = message
        for state in request.sequences:
            if state.finish_reason is None:
                self._finish(state, "error", None)
        output = self._output(request)
        self._check_when_idle()
        return output

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def check_invariants(self) -> None:
        """RuntimeError naming the first broken rule of the KV bookkeeping; when the engine is idle, also
        anything still held: a block, a sequence or an adapter pin that no request owns any more."""
        block_manager = self.scheduler.block_manager
        block_manager.check_invariants()
        if self.has_unfinished():
            return
        leaks = []
        if block_manager.num_free_blocks != block_manager.num_usable_blocks:
            leaks.append(f"{block_manager.num_usable_blocks - block_manager.num_free_blocks} KV blocks")
        if self.scheduler.has_unfinished() or self.sequences:
            leaks.append("sequences in the scheduler or the engine")
        pinned = [info.name for info in self.lora_manager.list_adapters() if info.active_requests]
        if pinned:
            leaks.append(f"pins on adapters {pinned}")
        if leaks:
            raise RuntimeError(f"the engine is idle but still holds {', '.join(leaks)}")

    def _check_when_idle(self) -> None:
        """Debug mode (EngineConfig.debug_invariants, EMBER_DEBUG_INVARIANTS=1): check the bookkeeping each time
        the engine runs out of work, as mini-sglang does; idle moments are when leaks show and checks are free."""
        if self.config.debug_invariants and not self.has_unfinished():
            self.check_invariants()

    # ---- adapters -------------------------------------------------------------------------------------

    def register_lora(self, name: str, source: str | LoraAdapter) -> LoraInfo:
        """Serve a PEFT adapter folder (or an adapter in memory) as `name`; LoraError if it does not fit."""
        return self.lora_manager.register(name, source)

    def unregister_lora(self, name: str) -> None:
        """LoraError if unknown or still used by a running request."""
        self.lora_manager.unregister(name)

    def list_loras(self) -> list[LoraInfo]:
        return self.lora_manager.list_adapters()

    # ---- the step -------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        self.timer.begin()
        if self.thread_governor is not None:
            self._follow_free_cores(self.thread_governor)
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            self.timer.cancel()
            self._check_when_idle()
            return []
        self.timer.mark_forward_start()
        result = self.runner.execute(
            sched, {s.sequence_id: self.sequences[s.sequence_id].sequence for s in sched.scheduled}
        )
        self.timer.mark_forward_end()
        outputs = self._postprocess(sched, result)
        self.timer.end()
        self.stats.record_step(sched, self.scheduler.stats())
        self._check_when_idle()
        return outputs

    def _follow_free_cores(self, governor: ThreadGovernor) -> None:
        threads = governor.poll()
        if threads is not None:
            logger.info(
                "compute threads %d -> %d: other processes keep %.1f cores busy",
                self.runner.num_threads(),
                threads,
                governor.others_busy_cores,
            )
            self.runner.set_num_threads(threads)

    def _postprocess(self, sched: SchedulerOutput, result: ModelRunnerOutput) -> list[RequestOutput]:
        now = time.time()
        touched: dict[str, Request] = {}
        for item in sched.scheduled:
            state = self.sequences.get(item.sequence_id)
            if state is None:
                continue
            request = self.requests[state.request_id]
            if request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = now
                request.num_cached_tokens = state.sequence.num_cached_tokens
            scored = result.prompt_logprobs.get(item.sequence_id)
            if scored is not None and request.prompt_logprobs is not None:
                # By position: a preempted request recomputes its prompt and scores the same tokens again.
                first, logprobs = scored
                request.prompt_logprobs[first : first + len(logprobs)] = logprobs
            if item.sequence_id in result.errors:
                request.error = result.errors[item.sequence_id]
                for sibling in request.sequences:
                    if sibling.finish_reason is None:
                        self._finish(sibling, "error", None)
                touched[request.request_id] = request
                continue
            token = result.sampled.get(item.sequence_id)
            if token is None:
                continue
            touched[request.request_id] = request
            if request.metrics.first_token_time is None:
                request.metrics.first_token_time = now
            try:
                self._accept_token(state, token, result.logprobs.get(item.sequence_id))
            except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the others
                logger.exception("post-processing failed for sequence %s", item.sequence_id)
                request.error = f"post-processing failed: {exc}"
                for sibling in request.sequences:
                    if sibling.finish_reason is None:
                        self._finish(sibling, "error", None)
        outputs = []
        for request in touched.values():
            output = self._output(request)
            if output is not None:
                outputs.append(output)
        return outputs

    def _accept_token(self, state: SequenceOutputState, token: int, logprob) -> None:
        if state.finish_reason is not None:
            return
        sequence = state.sequence
        sequence.append_output_token(token)
        state.delta_token_ids.append(token)
        if logprob is not None and state.logprobs is not None:
            state.logprobs.append(logprob)
            state.delta_logprobs.append(logprob)
            state.cumulative_logprob += logprob.logprob
        matcher = self.runner.matcher(sequence.sequence_id)
        if matcher is not None:
            matcher.accept(token)
        new_text = state.detokenizer.add_tokens([token])
        stop = state.stop_checker.check(token, new_text, sequence.num_output_tokens)
        self._emit(state, stop.emit_text)
        if stop.finished:
            self._finish(state, stop.finish_reason, stop.stop_reason)
        elif matcher is not None and matcher.is_finished:
            # The grammar admits nothing but EOS now: end here instead of spending a step to sample it.
            self._emit(state, state.stop_checker.flush(state.detokenizer.flush()))
            self._finish(state, "stop", None)

    def _emit(self, state: SequenceOutputState, text: str) -> None:
        state.text += text
        state.delta_text += text

    def _finish(self, state: SequenceOutputState, reason: str, stop_reason: str | int | None) -> None:
        state.finish_reason = reason
        state.stop_reason = stop_reason
        sid = state.sequence.sequence_id
        # Text held back as a possible stop string, and incomplete bytes, are final now.
        if reason == "length":
            self._emit(state, state.stop_checker.flush(state.detokenizer.flush()))
        self.scheduler.finish_sequence(sid, _FINISH_STATUS[reason])
        self.runner.release(sid)
        if state.sequence.lora_key is not None:
            self.lora_manager.release(state.sequence.lora_key)

    def _output(self, request: Request) -> RequestOutput | None:
        finished = request.finished
        if not finished and not request.streams_incrementally:
            return None
        chosen = request.chosen_sequences()
        want_lps = request.params.logprobs is not None
        outs = []
        for new_index, state in enumerate(chosen):
            out = state.take_output(want_lps)
            out.index = new_index
            if not want_lps:
                out.logprobs = None
            if not request.streams_incrementally:  # reported once, whole: the delta is everything
                out.delta_text, out.delta_token_ids = out.text, list(out.token_ids)
                out.delta_logprobs = list(out.logprobs) if out.logprobs is not None else None
            outs.append(out)
        if finished:
            request.metrics.finished_time = time.time()
            del self.requests[request.request_id]
            for state in request.sequences:
                self.sequences.pop(state.sequence.sequence_id, None)
        return RequestOutput(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            outputs=outs,
            finished=finished,
            num_cached_tokens=request.num_cached_tokens,
            prompt_logprobs=request.prompt_logprobs,
            metrics=request.metrics,
            error=request.error,
        )
