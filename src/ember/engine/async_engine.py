"""The engine behind the HTTP server: a background thread runs step() while requests stream out via asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ember.engine.errors import EngineDeadError, EngineStepError, QueueFullError, ServerShuttingDownError
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.outputs import EmbeddingOutput, RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.stats import EngineStats
from ember.lora.adapter import LoraAdapter
from ember.lora.errors import LoraError
from ember.lora.manager import LoraInfo
from ember.threads import StepGate

logger = logging.getLogger(__name__)


@dataclass
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    kwargs: dict[str, Any]


@dataclass
class _AddEmbedding:
    request_id: str
    inputs: list[list[int]]
    priority: int


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    """Runs fn(engine) on the engine thread, so torch work never runs on two threads at once."""

    fn: Any
    future: concurrent.futures.Future


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | EmbeddingOutput | BaseException] = asyncio.Queue()

    def put(self, item: RequestOutput | EmbeddingOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _deliver(items: list[tuple[_Stream, RequestOutput | EmbeddingOutput]]) -> None:
    """Runs on the event loop: one step's outputs into their streams' queues."""
    for stream, output in items:
        stream.queue.put_nowait(output)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, step_gate: StepGate | None = None) -> None:
        self.engine = engine
        # Shared by the engines of one server (server/common/model_registry.py): one engine steps at a time, on
        # every compute thread, instead of two OpenMP teams fighting over the same cores.
        self.step_gate = step_gate
        self.tokenizer = engine.tokenizer
        self.model_config = engine.model.config
        self.max_model_len = engine.max_model_len
        self.chat_template = engine.model.chat_template
        self.model_name = engine.model.name
        self.default_params = engine.default_params  # the checkpoint's defaults: the base for omitted values
        self.max_waiting = engine.config.scheduler.max_waiting
        self._commands: queue.SimpleQueue[_Add | _AddEmbedding | _Abort | _Call | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()  # guards _streams and _pending_adds across the two threads
        self._pending_adds = 0
        self._stats = EngineStats()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dead: BaseException | None = None
        self._closed: ServerShuttingDownError | None = (
            None  # set by end_all_requests: every new request gets it
        )
        self._pause = threading.Condition()  # guards the two flags below
        self._pause_requested = False
        self._paused = False  # set by the engine thread at a step boundary while a pause is requested
        self._steps_granted = 0  # steps a paused engine may still run (resume(steps=...))

    @classmethod
    def from_loaded(cls, model: Any, config: EngineConfig, step_gate: StepGate | None = None) -> AsyncEngine:
        return cls(LLMEngine(model, config), step_gate)

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ember-engine", daemon=True)
            self._thread.start()

    async def shutdown(self) -> None:
        """Aborts what is still running, then stops the step loop."""
        self._stopping = True
        self._commands.put(None)
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    async def end_all_requests(self, error: ServerShuttingDownError) -> int:
        """The end of a shutdown's drain: from now on every new request is refused with `error`, and every
        request in flight ends with it (a stream sends it as its error event, a whole response is a 503); their
        KV blocks are freed. Returns how many requests were ended."""
        self._closed = error
        with self._lock:
            ended = len(self._streams)
        if self._thread is None or not self._thread.is_alive():
            self._fail_streams(error)  # no engine thread to ask; its requests are gone with it
            return ended
        await self.run_on_engine(lambda _: self._fail_all(error))
        return ended

    def pause(self, timeout_s: float = 60.0) -> None:
        """Stops stepping between two steps and returns once no step is in flight (from any thread).

        While paused, requests are still accepted, queued and aborted, and engine calls still run; nothing is
        generated. For work that needs the model idle (e.g. swapping weights), and for tests that must hold the
        engine in a known state instead of racing it with sleeps."""
        with self._pause:
            self._pause_requested = True
            self._wake.set()
            if self._thread is None or not self._thread.is_alive():
                return
            if not self._pause.wait_for(lambda: self._paused, timeout_s):
                raise TimeoutError(f"the engine did not reach a step boundary within {timeout_s} s")

    def resume(self, steps: int | None = None) -> None:
        """Steps again; with `steps`, only that many steps and then it is paused again (pause() waits for it)."""
        with self._pause:
            if steps is None:
                self._pause_requested = False
            else:
                self._steps_granted = steps
            self._paused = False
        self._wake.set()

    @property
    def is_running(self) -> bool:
        """False once the step loop has died or shut down: /health reports 503 then."""
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    # ---- requests ---------------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        with self._lock:
            snapshot = copy.copy(self._stats)
            snapshot.num_waiting += self._pending_adds
        return snapshot

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        *,
        lora_id: str | None = None,
        cache_salt: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        if self._closed is not None:
            raise ServerShuttingDownError(str(self._closed))
        self.engine.resolve_max_tokens(len(prompt_token_ids), params)  # a ValueError here is the caller's 400
        if lora_id is not None and lora_id not in self.engine.lora_manager:  # the registry is thread-safe
            raise LoraError(f"unknown LoRA adapter {lora_id!r}")
        kwargs = {"lora_id": lora_id, "cache_salt": cache_salt, "priority": priority}
        stream = self._submit(_Add(request_id, list(prompt_token_ids), params, kwargs))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._leave(request_id, finished)

    def _submit(self, command: _Add | _AddEmbedding) -> _Stream:
        """Opens the caller's stream and queues its request for the engine thread (QueueFullError, ValueError)."""
        stream = _Stream(asyncio.get_running_loop())
        with self._lock:
            waiting = self._stats.num_waiting + self._pending_adds
            if waiting >= self.max_waiting:
                raise QueueFullError(waiting)
            if command.request_id in self._streams:
                raise ValueError(f"request id {command.request_id!r} is already in use")
            self._streams[command.request_id] = stream
            self._pending_adds += 1
        self._commands.put(command)
        self._wake.set()
        return stream

    def _leave(self, request_id: str, finished: bool) -> None:
        """Closes the caller's stream; if it left before the end (disconnect, cancel), its KV is freed within
        one step."""
        with self._lock:
            self._streams.pop(request_id, None)
        if not finished:
            self._commands.put(_Abort(request_id))
            self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._commands.put(_Abort(request_id))
        self._wake.set()

    async def run_on_engine(self, fn: Any) -> Any:
        """Runs fn(llm_engine) between two steps and returns its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(_Call(fn, future))
        self._wake.set()
        return await asyncio.wrap_future(future)

    async def register_lora(self, name: str, source: str | LoraAdapter) -> LoraInfo:
        """Loads and checks the adapter on the engine thread (torch work never runs on two threads)."""
        return await self.run_on_engine(lambda engine: engine.register_lora(name, source))

    async def unregister_lora(self, name: str) -> None:
        await self.run_on_engine(lambda engine: engine.unregister_lora(name))

    def list_loras(self) -> list[LoraInfo]:
        """Safe from any thread: the registry takes its own lock."""
        return self.engine.list_loras()

    async def embed(self, inputs: list[list[int]], request_id: str, *, priority: int = 0) -> EmbeddingOutput:
        """Embeds the inputs (token ids) through the scheduler, beside running streams
        (LLMEngine.add_embedding_request). If the caller goes away (cancelled), the request is aborted and its KV
        blocks freed within one step. ValueError / QueueFullError when it is refused."""
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        stream = self._submit(_AddEmbedding(request_id, inputs, priority))
        answered = False
        try:
            item = await stream.queue.get()
            answered = True
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, EmbeddingOutput)
            return item
        finally:
            self._leave(request_id, answered)

    # ---- the engine thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands()
                if self._at_pause():
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                if not self.engine.has_unfinished():
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                try:
                    if self.step_gate is None:
                        outputs = self.engine.step()
                    else:
                        with self.step_gate:
                            outputs = self.engine.step()
                except Exception as exc:  # noqa: BLE001 - a bug in one step must not take the server down
                    logger.exception("engine step failed; failing the requests in flight")
                    self._fail_all(EngineStepError(f"internal error in the engine step: {exc}"))
                    continue
                self._publish(outputs)
        except BaseException as exc:  # noqa: BLE001
            self._dead = exc
            logger.exception("engine thread died")
        finally:
            self._fail_all(EngineDeadError("the server is shutting down"))

    def _at_pause(self) -> bool:
        """True while a pause is requested; tells the waiting pause() that no step is in flight."""
        with self._pause:
            if self._pause_requested and self._steps_granted > 0 and self.engine.has_unfinished():
                self._steps_granted -= 1
                return False
            self._paused = self._pause_requested
            if self._paused:
                self._pause.notify_all()
            return self._paused

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command is None:
                return
            if isinstance(command, _Add | _AddEmbedding):
                self._add(command)
            elif isinstance(command, _Abort):
                output = self.engine.abort_request(command.request_id)
                self._publish([output] if output is not None else [])
            else:
                # A caller that stopped waiting (cancelled: its client left) cancelled the future too; its call
                # is skipped, and one already running can no longer be cancelled, so setting its result below
                # cannot raise InvalidStateError (which killed the engine thread).
                if not command.future.set_running_or_notify_cancel():
                    continue
                try:
                    command.future.set_result(command.fn(self.engine))
                except Exception as exc:  # noqa: BLE001 - delivered to the awaiting caller
                    command.future.set_exception(exc)

    def _add(self, command: _Add | _AddEmbedding) -> None:
        with self._lock:
            self._pending_adds -= 1
            stream = self._streams.get(command.request_id)
        if stream is None:  # the caller left before the engine saw the request
            return
        if self._closed is not None:  # shutting down: end_all_requests fails (or failed) its stream
            return
        try:
            if isinstance(command, _AddEmbedding):
                self.engine.add_embedding_request(
                    command.request_id, command.inputs, priority=command.priority
                )
            else:
                self.engine.add_request(
                    command.request_id, command.prompt_token_ids, command.params, **command.kwargs
                )
        except Exception as exc:  # noqa: BLE001 - refused requests go back to their caller
            stream.put(exc)
        self._snapshot_stats()

    def _publish(self, outputs: list[RequestOutput | EmbeddingOutput]) -> None:
        """Hands one step's outputs to their streams with one wake-up per event loop, not one per stream:
        each call_soon_threadsafe writes to the loop's self-pipe, and at 32 streams those writes and the
        loop's wake-ups were a visible share of the step (measured in the HTTP benchmark's profile)."""
        self._snapshot_stats()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput | EmbeddingOutput]]] = {}
        with self._lock:
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream, output))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _snapshot_stats(self) -> None:
        stats = copy.copy(self.engine.stats)
        live = self.engine.scheduler.stats()  # fresh after aborts too, not only after steps
        stats.num_waiting = live.num_waiting
        stats.num_running = live.num_running
        stats.kv_usage = live.kv_usage
        with self._lock:
            self._stats = stats

    def _fail_all(self, exc: BaseException) -> None:
        for request_id in [*self.engine.requests, *self.engine.embeddings.request_ids()]:
            self.engine.fail_request(request_id, str(exc))
        self._snapshot_stats()
        self._fail_streams(exc)

    def _fail_streams(self, exc: BaseException) -> None:
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.put(exc)
