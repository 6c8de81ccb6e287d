"""The synchronous engine: add requests, then step() = schedule, run the batch, post-process.

Who owns what: the scheduler owns each Sequence's place (waiting, running, preempted) and its KV blocks; the
model runner owns per-sequence runtime state (random stream, grammar matcher, LoRA slot, pooled sum), which it
sets up and lets go of only from SchedulerOutput.added / finished_ids; the engine owns each Request (text,
logprobs, metrics, its adapter pins) and, in `embeddings`, each embedding request. The engine never reaches into the runner: the SchedulerOutput goes in, the
ModelRunnerOutput comes back. docs/architecture.md draws the whole path.
"""

from __future__ import annotations

import logging
import time

from ember.engine.admission import admit_request
from ember.engine.embedding_requests import EmbeddingRequests
from ember.engine.engine_config import CacheConfig, EngineConfig, SchedulerConfig
from ember.engine.forward_path import fused_step_serves
from ember.engine.generation_budget import resolve_max_tokens
from ember.engine.generation_defaults import default_sampling_params
from ember.engine.invariants import check_engine_invariants
from ember.engine.model_runner import ModelRunner, ModelRunnerOutput
from ember.engine.outputs import EmbeddingOutput, RequestOutput
from ember.engine.request import FINISH_STATUS, Request, SequenceOutputState
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import Scheduler
from ember.engine.scheduler_output import SchedulerOutput
from ember.engine.speculation.policy import DraftPolicy
from ember.engine.speculation.verify import VerifiedTokens
from ember.engine.stats import EngineStats, StepTimer
from ember.lora.adapter import LoraAdapter
from ember.lora.manager import LoraInfo, LoraManager
from ember.models.kv_cache import allocate_kv_caches, kv_bytes_per_block
from ember.models.kv_cache_format import resolve_kv_cache_dtype
from ember.models.loader import LoadedModel
from ember.structured.compiler import GrammarCompiler
from ember.threads import ThreadGovernor

__all__ = ["EngineConfig", "LLMEngine"]  # EngineConfig lives in engine_config; many callers import it here

logger = logging.getLogger(__name__)


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
        self.kv_format = resolve_kv_cache_dtype(
            cache_cfg.kv_cache_dtype, dtype, fused_step_serves(model.network, config.fused_decode)
        )
        if num_blocks == 0:
            per_block = kv_bytes_per_block(mc, cache_cfg.block_size, self.kv_format)
            num_blocks = max(2, int(config.kv_cache_gib * 2**30) // per_block)
        self.num_blocks = num_blocks
        self.block_size = cache_cfg.block_size
        kv_caches = allocate_kv_caches(mc, num_blocks, cache_cfg.block_size, self.kv_format, model.device)
        eos = tuple(dict.fromkeys(model.generation.eos_token_ids + tuple(self.tokenizer.eos_token_ids)))
        self.eos_token_ids = eos
        # The base for values a request leaves out (the API layer and LLM.generate build on it).
        self.default_params = default_sampling_params(model.generation)
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
            model.network,
            kv_caches,
            cache_cfg.block_size,
            model.device,
            eos,
            lora_manager=self.lora_manager,
            grammar_compiler=self.grammar_compiler,
            fused_decode=config.fused_decode,
        )
        self.scheduler = Scheduler(
            SchedulerConfig(**{**config.scheduler.__dict__, "max_model_len": self.max_model_len}),
            CacheConfig(**{**cache_cfg.__dict__, "num_blocks": num_blocks}),
            DraftPolicy(config.speculation.max_batch),
        )
        self.requests: dict[str, Request] = {}
        self.embeddings = EmbeddingRequests(self.scheduler, mc.vocab_size)
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
        """All or nothing (engine/admission.py): a refusal anywhere raises with nothing left behind."""
        if request_id in self.requests or request_id in self.embeddings:
            raise ValueError(f"request id {request_id!r} is already running")
        request = admit_request(
            self,
            request_id,
            prompt_token_ids,
            params,
            lora_id=lora_id,
            cache_salt=cache_salt,
            priority=priority,
            arrival_time=arrival_time,
        )
        for state in request.sequences:
            self.sequences[state.sequence.sequence_id] = state
        self.requests[request_id] = request

    def add_embedding_request(
        self,
        request_id: str,
        inputs: list[list[int]],
        *,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        """Embed each input (token ids): mean-pooled final hidden states, prefilled in chunks under the step's
        token budget beside running streams; one EmbeddingOutput when all are done (engine/embedding_requests.py).
        All or nothing, like add_request."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        self.embeddings.add(request_id, inputs, priority, arrival_time)

    def abort_request(self, request_id: str) -> RequestOutput | EmbeddingOutput | None:
        """Stops every sequence of the request and frees its KV blocks at once."""
        if request_id in self.embeddings:
            output = self.embeddings.abort(request_id)
            self._settle_when_idle()
            return output
        request = self.requests.get(request_id)
        if request is None:
            return None
        for state in request.sequences:
            if state.finish_reason is None:
                self._finish(state, "abort", None)
        output = self._take_output(request)
        self._settle_when_idle()
        return output

    def fail_request(self, request_id: str, message: str) -> RequestOutput | EmbeddingOutput | None:
        """Ends the request with an error; its blocks leave the prefix cache, as their KV may be incomplete."""
        if request_id in self.embeddings:
            output = self.embeddings.fail(request_id, message)
            self._settle_when_idle()
            return output
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._fail(request, message)
        output = self._take_output(request)
        self._settle_when_idle()
        return output

    def has_unfinished(self) -> bool:
        return bool(self.requests) or bool(self.embeddings)

    def check_invariants(self) -> None:
        """RuntimeError naming the first broken rule of the KV bookkeeping; when the engine is idle, also
        anything still held that no request owns any more (engine/invariants.py)."""
        check_engine_invariants(self)

    def _settle_when_idle(self) -> None:
        """When the last request has left: hand the runner the finishes it has not heard of yet, through the one
        channel there is (an empty SchedulerOutput), so an idle engine holds nothing. In debug mode
        (EngineConfig.debug_invariants, EMBER_DEBUG_INVARIANTS=1) then check the bookkeeping, as mini-sglang
        does: idle moments are when leaks show, and the check costs no step any time."""
        if self.has_unfinished():
            return
        if self.scheduler.has_finished_to_report():
            self.runner.execute(self.scheduler.schedule())
        if self.config.debug_invariants:
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

    def step(self) -> list[RequestOutput | EmbeddingOutput]:
        self.timer.begin()
        if self.thread_governor is not None:
            self._follow_free_cores(self.thread_governor)
        refused: list[RequestOutput | EmbeddingOutput] = list(self.embeddings.feed())
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            self.runner.execute(sched)  # nothing to run: the runner only lets go of what finished
            self.timer.cancel()
            self._settle_when_idle()
            return refused
        self.timer.mark_forward_start()
        try:
            result = self.runner.execute(sched)
        except Exception as exc:  # noqa: BLE001 - the runner isolates forward faults; this is anything else
            logger.exception("engine step failed; failing the requests it ran")
            # Only the requests this step ran fail: a waiting one, or one left out of the batch, never ran.
            message = f"internal error in the engine step: {exc}"
            result = ModelRunnerOutput(errors={item.sequence_id: message for item in sched.scheduled})
        self.timer.mark_forward_end()
        outputs = refused + self._postprocess(sched, result) + self.embeddings.on_step(result)
        self.timer.end()
        self.stats.record_step(sched, self.scheduler.stats(), result.forward_path)
        self._settle_when_idle()
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
                self._fail(request, result.errors[item.sequence_id])
                touched[request.request_id] = request
                continue
            verified = result.verified.get(item.sequence_id)
            if verified is not None:
                touched[request.request_id] = request
                if request.metrics.first_token_time is None:
                    request.metrics.first_token_time = now
                self._accept_verified(request, state, verified, item.sequence_id in result.grammar_finished)
                continue
            token = result.sampled.get(item.sequence_id)
            if token is None:
                continue
            touched[request.request_id] = request
            if request.metrics.first_token_time is None:
                request.metrics.first_token_time = now
            try:
                grammar_finished = item.sequence_id in result.grammar_finished
                self._accept_token(state, token, result.logprobs.get(item.sequence_id), grammar_finished)
            except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the others
                logger.exception("post-processing failed for sequence %s", item.sequence_id)
                self._fail(request, f"post-processing failed: {exc}")
        outputs = []
        for request in touched.values():
            output = self._take_output(request)
            if output is not None:
                outputs.append(output)
        return outputs

    def _accept_token(self, state: SequenceOutputState, token: int, logprob, grammar_finished: bool) -> None:
        if state.finish_reason is not None:
            return
        stop = state.add_token(token, logprob)
        if stop.finished:
            self._finish(state, stop.finish_reason, stop.stop_reason)  # type: ignore[arg-type]
        elif grammar_finished:
            # The grammar admits nothing but EOS now: end here instead of spending a step to sample it.
            self._finish(state, "stop", None, flush=True)

    def _accept_verified(
        self, request: Request, state: SequenceOutputState, verified: VerifiedTokens, grammar_finished: bool
    ) -> None:
        """Speculative decoding: the tokens a verified draft yields, one by one as plain decodes would have
        added them (a stop ends the run there); then the scheduler rolls back the slots of rejected drafts."""
        sequence_id = state.sequence.sequence_id
        num_added = 0
        try:
            for token, logprob in zip(verified.token_ids, verified.logprobs, strict=True):
                num_added += 1
                last = num_added == len(verified.token_ids)
                self._accept_token(state, token, logprob, grammar_finished and last)
                if state.finish_reason is not None:
                    break
        except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the others
            logger.exception("post-processing failed for sequence %s", sequence_id)
            self._fail(request, f"post-processing failed: {exc}")
        kept = min(num_added, verified.num_accepted)
        request.accepted_prediction_tokens += kept
        request.rejected_prediction_tokens += verified.num_drafted - kept
        self.stats.record_draft(verified.num_drafted, verified.num_accepted, max(0, num_added - 1))
        self.scheduler.accept_draft(sequence_id, verified.num_accepted)

    def _fail(self, request: Request, message: str) -> None:
        request.error = message
        for state in request.sequences:
            if state.finish_reason is None:
                self._finish(state, "error", None)

    def _finish(
        self, state: SequenceOutputState, reason: str, stop_reason: str | int | None, flush: bool = False
    ) -> None:
        """The scheduler frees the sequence's KV now and tells the runner in its next SchedulerOutput; the
        adapter pin goes when the whole request leaves the engine (_take_output)."""
        state.end(reason, stop_reason, flush=flush or reason == "length")
        self.scheduler.finish_sequence(state.sequence.sequence_id, FINISH_STATUS[reason])

    def _take_output(self, request: Request) -> RequestOutput | None:
        output = request.take_output()
        if request.finished:
            del self.requests[request.request_id]
            for state in request.sequences:
                self.sequences.pop(state.sequence.sequence_id, None)
                if state.sequence.lora_key is not None:
                    self.lora_manager.release(state.sequence.lora_key)
        return output
