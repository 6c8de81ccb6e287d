"""The synchronous engine: add requests, then step() = schedule, run the batch, post-process."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from ember.engine.detokenizer import IncrementalDetokenizer
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.errors import QueueFullError
from ember.engine.model_runner import ModelRunner, ModelRunnerOutput
from ember.engine.outputs import RequestMetrics, RequestOutput
from ember.engine.request import Request, RequestStatus
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import Scheduler
from ember.engine.scheduler_output import SchedulerOutput
from ember.engine.sequence import ParentRequest, SequenceState
from ember.engine.stats import EngineStats, StepTimer
from ember.engine.stop_checker import StopChecker
from ember.lora.adapter import LoraAdapter
from ember.lora.config import LoraConfig
from ember.lora.manager import LoraInfo, LoraManager
from ember.models.kv_cache import allocate_kv_caches, kv_bytes_per_block
from ember.models.loader import LoadedModel
from ember.structured.compiler import GrammarCompiler
from ember.structured.matcher import GrammarMatcher
from ember.threads import ThreadGovernor

logger = logging.getLogger(__name__)

_FINISH_STATUS = {
    "stop": RequestStatus.FINISHED_STOPPED,
    "length": RequestStatus.FINISHED_LENGTH,
    "abort": RequestStatus.FINISHED_ABORTED,
    "error": RequestStatus.FINISHED_ERROR,
}


@dataclass(frozen=True)
class EngineConfig:
    """How much KV cache to reserve and how the scheduler batches; each part keeps its own section."""

    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    kv_cache_gib: float = 1.0
    """Memory for the paged KV cache when cache.num_blocks is 0 (decided from this)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    adapt_threads: int = 0
    """When > 0: re-measure the cores other processes leave free while running and move the compute thread count
    between 1 and this many (`ember serve` without --threads: all cores it may use). 0: the count stays as set."""


def child_request_id(parent_id: str, index: int, count: int) -> str:
    return parent_id if count == 1 else f"{parent_id}#{index}"


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
        self.parents: dict[str, ParentRequest] = {}
        self.sequences: dict[str, SequenceState] = {}
        self.stats = EngineStats()
        self.timer = StepTimer()
        self.thread_governor = (
            ThreadGovernor(config.adapt_threads, self.runner.num_threads())
            if config.adapt_threads > 0
            else None
        )

    # ---- requests in ----------------------------------------------------------------------------------

    def resolve_max_tokens(self, prompt_len: int, params: SamplingParams) -> int:
        room = self.max_model_len - prompt_len
        if room < 1:
            raise ValueError(
                f"the prompt has {prompt_len} tokens, which leaves no room to generate within the "
                f"model's context length of {self.max_model_len} tokens"
            )
        return room if params.max_tokens is None else min(params.max_tokens, room)

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
        if request_id in self.parents:
            raise ValueError(f"request id {request_id!r} is already running")
        if not prompt_token_ids:
            raise ValueError("the prompt is empty; at least one token is needed")
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        max_tokens = self.resolve_max_tokens(len(prompt_token_ids), params)
        # Compiled before anything is admitted: an invalid schema or grammar is the caller's ValueError.
        grammar = None if params.structured is None else self.grammar_compiler.compile(params.structured)
        now = arrival_time if arrival_time is not None else time.time()
        parent = ParentRequest(request_id, list(prompt_token_ids), params, RequestMetrics(arrival_time=now))
        if params.prompt_logprobs is not None:
            parent.prompt_logprobs = [None] * len(prompt_token_ids)
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
                rid = child_request_id(request_id, index, count)
                request = Request(
                    request_id=rid,
                    prompt_token_ids=list(prompt_token_ids),
                    sampling_params=seq_params,
                    arrival_time=now,
                    priority=priority,
                    lora_id=lora_keys[index],
                    cache_salt=cache_salt,
                    max_tokens=max_tokens,
                )
                seq = SequenceState(
                    request=request,
                    parent_id=request_id,
                    index=index,
                    detokenizer=IncrementalDetokenizer(
                        self.tokenizer, prompt_token_ids, params.skip_special_tokens
                    ),
                    stop_checker=StopChecker(params, self.eos_token_ids, max_tokens),
                    logprobs=[] if seq_params.logprobs is not None else None,
                )
                parent.sequences.append(seq)
        except BaseException:
            for key in lora_keys:
                if key is not None:
                    self.lora_manager.release(key)
            raise
        # Admit the first sample before the rest, so they find its prompt blocks in the prefix cache.
        for seq in parent.sequences:
            self.scheduler.add_request(seq.request)
            self.sequences[seq.request.request_id] = seq
            if params.seed is not None:
                self.runner.register_seed(seq.request.request_id, child_seed(params.seed, seq.index))
            if grammar is not None:
                matcher = GrammarMatcher(self.grammar_compiler.grammar_tokenizer, grammar)
                self.runner.register_matcher(seq.request.request_id, matcher)
        self.parents[request_id] = parent

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stops every sequence of the request and frees its KV blocks at once."""
        parent = self.parents.get(request_id)
        if parent is None:
            return None
        for seq in parent.sequences:
            if seq.finish_reason is None:
                self._finish(seq, "abort", None)
        return self._output(parent)

    def fail_request(self, request_id: str, message: str) -> RequestOutput | None:
        """Ends the request with an error; its blocks leave the prefix cache, as their KV may be incomplete."""
        parent = self.parents.get(request_id)
        if parent is None:
            return None
        parent.error = message
        for seq in parent.sequences:
            if seq.finish_reason is None:
                self._finish(seq, "error", None)
        return self._output(parent)

    def has_unfinished(self) -> bool:
        return bool(self.parents)

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
            return []
        self.timer.mark_forward_start()
        result = self.runner.execute(
            sched, {s.request_id: self.sequences[s.request_id].request for s in sched.scheduled}
        )
        self.timer.mark_forward_end()
        outputs = self._postprocess(sched, result)
        self.timer.end()
        self.stats.record_step(sched, self.scheduler.stats())
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
        touched: dict[str, ParentRequest] = {}
        for item in sched.scheduled:
            seq = self.sequences.get(item.request_id)
            if seq is None:
                continue
            parent = self.parents[seq.parent_id]
            if parent.metrics.first_scheduled_time is None:
                parent.metrics.first_scheduled_time = now
                parent.num_cached_tokens = seq.request.num_cached_tokens
            scored = result.prompt_logprobs.get(item.request_id)
            if scored is not None and parent.prompt_logprobs is not None:
                # By position: a preempted request recomputes its prompt and scores the same tokens again.
                first, logprobs = scored
                parent.prompt_logprobs[first : first + len(logprobs)] = logprobs
            if item.request_id in result.errors:
                parent.error = result.errors[item.request_id]
                for sibling in parent.sequences:
                    if sibling.finish_reason is None:
                        self._finish(sibling, "error", None)
                touched[parent.request_id] = parent
                continue
            token = result.sampled.get(item.request_id)
            if token is None:
                continue
            touched[parent.request_id] = parent
            if parent.metrics.first_token_time is None:
                parent.metrics.first_token_time = now
            try:
                self._accept_token(seq, token, result.logprobs.get(item.request_id))
            except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the others
                logger.exception("post-processing failed for request %s", item.request_id)
                parent.error = f"post-processing failed: {exc}"
                for sibling in parent.sequences:
                    if sibling.finish_reason is None:
                        self._finish(sibling, "error", None)
        outputs = []
        for parent in touched.values():
            output = self._output(parent)
            if output is not None:
                outputs.append(output)
        return outputs

    def _accept_token(self, seq: SequenceState, token: int, logprob) -> None:
        if seq.finish_reason is not None:
            return
        request = seq.request
        request.append_output_token(token)
        seq.delta_token_ids.append(token)
        if logprob is not None and seq.logprobs is not None:
            seq.logprobs.append(logprob)
            seq.delta_logprobs.append(logprob)
            seq.cumulative_logprob += logprob.logprob
        matcher = self.runner.matcher(request.request_id)
        if matcher is not None:
            matcher.accept(token)
        new_text = seq.detokenizer.add_tokens([token])
        stop = seq.stop_checker.check(token, new_text, request.num_output_tokens)
        self._emit(seq, stop.emit_text)
        if stop.finished:
            self._finish(seq, stop.finish_reason, stop.stop_reason)
        elif matcher is not None and matcher.is_finished:
            # The grammar admits nothing but EOS now: end here instead of spending a step to sample it.
            self._emit(seq, seq.stop_checker.flush(seq.detokenizer.flush()))
            self._finish(seq, "stop", None)

    def _emit(self, seq: SequenceState, text: str) -> None:
        seq.text += text
        seq.delta_text += text

    def _finish(self, seq: SequenceState, reason: str, stop_reason: str | int | None) -> None:
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
        rid = seq.request.request_id
        # Text held back as a possible stop string, and incomplete bytes, are final now.
        if reason == "length":
            self._emit(seq, seq.stop_checker.flush(seq.detokenizer.flush()))
        self.scheduler.finish_request(rid, _FINISH_STATUS[reason])
        self.runner.release(rid)
        if seq.request.lora_id is not None:
            self.lora_manager.release(seq.request.lora_id)

    def _output(self, parent: ParentRequest) -> RequestOutput | None:
        finished = parent.finished
        if not finished and not parent.streams_incrementally:
            return None
        chosen = parent.chosen_sequences()
        want_lps = parent.params.logprobs is not None
        outs = []
        for new_index, seq in enumerate(chosen):
            out = seq.take_output(want_lps)
            out.index = new_index
            if not want_lps:
                out.logprobs = None
            if not parent.streams_incrementally:  # reported once, whole: the delta is everything
                out.delta_text, out.delta_token_ids = out.text, list(out.token_ids)
                out.delta_logprobs = list(out.logprobs) if out.logprobs is not None else None
            outs.append(out)
        if finished:
            parent.metrics.finished_time = time.time()
            del self.parents[parent.request_id]
            for seq in parent.sequences:
                self.sequences.pop(seq.request.request_id, None)
        return RequestOutput(
            request_id=parent.request_id,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=outs,
            finished=finished,
            num_cached_tokens=parent.num_cached_tokens,
            prompt_logprobs=parent.prompt_logprobs,
            metrics=parent.metrics,
            error=parent.error,
        )
