"""Preparing a generation request: one step from an API body to everything the engine and the response need,
complete: the served model or adapter, the ids, the prompt token ids (text, token ids, or chat messages through
the model's template and chat.plan), the generation budget, SamplingParams with the output constraint, and for
a chat the reader of its reply. The serving modules call it once, then only stream or collect.

The step runs on a small thread pool, never on the event loop: tokenizing a 1M-token prompt, rendering 100k
chat messages or checking a large grammar takes seconds, and on the loop it would stall every other client
(and /health). Every refusal is an APIError naming its parameter, raised before any engine request exists.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ember.chat.plan import ChatInputs, ChatPlan, ChatRequestError, plan_chat
from ember.chat.reply import ReplyReader
from ember.chat.tool_calls import new_tool_call_id
from ember.engine import generation_budget
from ember.engine.sampling_params import SamplingParams
from ember.engine.speculation.config import SpeculationParams
from ember.server.common.errors import invalid_request
from ember.server.common.generation import ClientLeft
from ember.server.common.prediction import speculation_params
from ember.server.common.prompts import PromptEncoder
from ember.server.common.protocol import SamplingRequest
from ember.server.common.served_models import ServedModels
from ember.structured import StructuredSpec, response_format_message, spec_from_response_format

if TYPE_CHECKING:
    from ember.server.common.generation import EngineWatch

T = TypeVar("T")
CONTEXT_LENGTH_EXCEEDED = generation_budget.CONTEXT_LENGTH_EXCEEDED  # the embeddings route uses it too
CACHE_ISOLATION_HEADER = "x-prompt-cache-isolation-key"
# Two threads: one long preparation leaves the other for everyone else. More would take cores from the
# engine's compute threads (ember.threads sizes those to the idle cores) for work that is rarely long.
PREPARATION_THREADS = 2


def new_id(prefix: str) -> str:
    """A new request id (`chatcmpl-...`, `msg-...`): the engine's request id and the response's `id`."""
    return f"{prefix}-{uuid.uuid4().hex}"


# -- the generation budget and SamplingParams -----------------------------------------------------------


def resolve_max_tokens(
    prompt_len: int,
    requested: int | None,
    max_model_len: int,
    behavior: str = "truncate",
    prompt_param: str = "prompt",
) -> int:
    """The engine's generation budget (ember.engine.generation_budget, with Fireworks'
    context_length_exceeded_behavior); its refusal becomes a 400 naming the input at fault."""
    try:
        return generation_budget.resolve_max_tokens(prompt_len, requested, max_model_len, behavior)
    except generation_budget.GenerationBudgetError as error:
        param = prompt_param if error.param == "prompt" else error.param
        raise invalid_request(str(error), param=param, code=error.code) from None


@dataclass(frozen=True)
class SamplingLimits:
    """What the server allows beyond SamplingParams' own range checks."""

    vocab_size: int
    max_n: int
    defaults: SamplingParams = field(default_factory=SamplingParams)  # for values a request leaves out


# SamplingParams names the field first in each of its messages ("top_p must be in (0, 1]").
_PARAM_FIELDS = set(SamplingParams.__dataclass_fields__)


def build_sampling_params(
    request: SamplingRequest,
    limits: SamplingLimits,
    *,
    max_tokens: int,
    best_of: int | None = None,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    structured: StructuredSpec | None = None,
    speculation: SpeculationParams | None = None,
) -> SamplingParams:
    """SamplingParams for one prompt of `request`; any out-of-range value becomes a 400 naming its parameter.
    `structured` (a StructuredSpec, or None for free text) is the output constraint, built by the caller."""
    n = request.n if request.n is not None else 1
    for name, value in (("n", n), ("best_of", best_of)):
        if value is not None and value > limits.max_n:
            raise invalid_request(f"{name} must be at most {limits.max_n}, got {value}", param=name)
    for token_id in request.stop_token_ids or []:
        if token_id >= limits.vocab_size:
            raise invalid_request(
                f"stop_token_ids: {token_id} is outside the vocabulary", param="stop_token_ids"
            )
    defaults = limits.defaults
    try:
        return SamplingParams(
            n=n,
            best_of=best_of,
            max_tokens=max_tokens,
            min_tokens=min(request.min_tokens or 0, max_tokens),
            temperature=_or(request.temperature, defaults.temperature),
            top_p=_or(request.top_p, defaults.top_p),
            top_k=_or(request.top_k, defaults.top_k),
            min_p=_or(request.min_p, defaults.min_p),
            typical_p=_or(request.typical_p, defaults.typical_p),
            repetition_penalty=_or(request.repetition_penalty, defaults.repetition_penalty),
            presence_penalty=_or(request.presence_penalty, defaults.presence_penalty),
            frequency_penalty=_or(request.frequency_penalty, defaults.frequency_penalty),
            logit_bias=request.logit_bias_by_id(limits.vocab_size),
            seed=request.seed,
            stop=request.stop_list(),
            stop_token_ids=list(request.stop_token_ids or []),
            ignore_eos=bool(request.ignore_eos),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=_or(request.skip_special_tokens, True),
            structured=structured,
            speculation=speculation,
        )
    except ValueError as error:
        message = str(error)
        first_word = message.split(" ", 1)[0]
        raise invalid_request(message, param=first_word if first_word in _PARAM_FIELDS else None) from None


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def response_format_spec(response_format: Any) -> StructuredSpec | None:
    """The constraint of a completion's `response_format` (chat builds its own in chat.plan); a 400 naming
    response_format when the schema or grammar is invalid."""
    try:
        return spec_from_response_format(response_format)
    except ValueError as error:
        raise invalid_request(response_format_message(error), param="response_format") from None


# -- the preparation step -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineRequest:
    """One prompt to run: a completion with several prompts makes one of these per prompt."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None
    prompt_param: str = "prompt"
    lora_id: str | None = None  # the registered adapter to run with (ServedModels.lookup); None: base model


@dataclass(frozen=True)
class PromptEcho:
    """The part of a prompt returned in front of the completion (echo / Fireworks' echo_last)."""

    text: str
    token_ids: list[int]
    first_position: int  # index of token_ids[0] in the prompt


@dataclass(frozen=True)
class PreparedRequest:
    """Everything one API request needs, complete: what is left is to run it and shape the response."""

    model: str  # the name responses echo: the served model's, or the adapter's the client asked for
    response_id: str  # the response's `id`; the engine request ids are it (chat) or it plus "-<i>"
    request_id: str  # x-request-id: the client's own when it sent one, so it can correlate
    requests: list[EngineRequest]
    reader: ReplyReader | None = None  # chat: how the reply is read back (reasoning, tool calls)
    echoes: tuple[PromptEcho | None, ...] = ()  # completions: per prompt
    prompt_text: str | None = None  # chat: the rendered prompt (Fireworks' raw_output shows it)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt_token_ids) for r in self.requests)


@dataclass(frozen=True)
class ChatAsk:
    """A chat request of /v1/chat/completions or /v1/messages, in the plan's shapes."""

    model: str | None
    inputs: Callable[[], ChatInputs]  # called on the preparation thread: long conversations convert there
    sampling: SamplingRequest  # Anthropic's fields are mapped onto OpenAI's
    max_tokens: int | None  # None: up to the end of the context
    behavior: str = "truncate"  # Fireworks' context_length_exceeded_behavior
    logprobs: int | None = None
    cache_key: str | None = None  # prompt_cache_isolation_key from the body (else its header)
    id_prefix: str = "chatcmpl"
    new_tool_id: Callable[[], str] = new_tool_call_id
    param_names: Mapping[str, str] = field(default_factory=dict)  # the surface's names of the plan's params
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs: alternatives per prompt token
    include_stop_str_in_output: bool = False  # vLLM: matched stop strings stay in the text


@dataclass(frozen=True)
class PromptsAsk:
    """A /v1/completions request: one engine request per prompt."""

    model: str | None
    prompts: Callable[[], list[str | list[int]]]  # called on the preparation thread
    sampling: SamplingRequest
    max_tokens: int | None
    behavior: str = "truncate"
    best_of: int | None = None
    logprobs: int | None = None
    echo: bool = False
    echo_last: int | None = None
    cache_key: str | None = None
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs (echo with logprobs scores the prompt too)
    include_stop_str_in_output: bool = False


class Preparation:
    """The preparation step of one served model, and the threads it runs on."""

    def __init__(
        self,
        encoder: PromptEncoder,
        models: ServedModels,
        limits: SamplingLimits,
        max_model_len: int,
        threads: int = PREPARATION_THREADS,
    ) -> None:
        self.encoder = encoder
        self.models = models
        self.limits = limits
        self.max_model_len = max_model_len
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="ember-prepare")
        self._lock = threading.Lock()
        self.in_flight = 0  # preparations submitted and not yet done (queued or running)
        self.abandoned = 0  # preparations dropped because their client left first
        self.on_start: Callable[[], None] | None = None  # run on the thread before each one; tests hold it

    async def run(self, fn: Callable[..., T], *args: Any, watch: EngineWatch | None = None) -> T:
        """fn(*args) on a preparation thread; with `watch`, a client that leaves first abandons it (HTTP 499):
        a queued one never starts, a running one finishes unseen, and no engine request is ever made."""
        with self._lock:
            self.in_flight += 1
        # In the caller's context: the request's tenant (tenancy.viewing_tenant) decides which adapters it may use.
        future = self._executor.submit(contextvars.copy_context().run, self._call, fn, *args)
        future.add_done_callback(self._done)
        waiting = asyncio.wrap_future(future)
        if watch is None:
            return await waiting
        try:
            return await watch.unless_disconnected(waiting)
        except ClientLeft:
            with self._lock:
                self.abandoned += 1
            raise

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.on_start is not None:
            self.on_start()
        return fn(*args)

    def _done(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self.in_flight -= 1

    def close(self) -> None:
        """Stops the threads once their current work is done; queued work is dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def chat(self, ask: ChatAsk, headers: Mapping[str, str], watch: EngineWatch) -> PreparedRequest:
        return await self.run(self.prepare_chat, ask, headers, watch=watch)

    async def prompts(
        self, ask: PromptsAsk, headers: Mapping[str, str], watch: EngineWatch
    ) -> PreparedRequest:
        return await self.run(self.prepare_prompts, ask, headers, watch=watch)

    # -- on the preparation thread ------------------------------------------------------------------------

    def prepare_chat(self, ask: ChatAsk, headers: Mapping[str, str]) -> PreparedRequest:
        model, lora_id = self.models.lookup(ask.model)
        plan = self._plan(ask)
        ids = plan.prompt_token_ids
        max_tokens = resolve_max_tokens(
            len(ids), ask.max_tokens, self.max_model_len, ask.behavior, "messages"
        )
        params = build_sampling_params(
            ask.sampling,
            self.limits,
            max_tokens=max_tokens,
            logprobs=ask.logprobs,
            prompt_logprobs=ask.prompt_logprobs,
            structured=plan.structured,
            speculation=_speculation(ask.sampling, self.encoder),
        )
        params.include_stop_str_in_output = ask.include_stop_str_in_output
        if plan.stop:
            params.stop = [*params.stop, *plan.stop]
        if plan.keep_special_tokens and ask.sampling.skip_special_tokens is None:
            params.skip_special_tokens = False
        response_id = new_id(ask.id_prefix)
        salt = _cache_salt(headers, ask.cache_key)
        request = EngineRequest(response_id, ids, params, salt, "messages", lora_id)
        return PreparedRequest(
            model,
            response_id,
            _request_id(headers, response_id),
            [request],
            plan.reader,
            prompt_text=plan.prompt,
        )

    def count_chat_tokens(self, ask: ChatAsk) -> int:
        """The prompt length of a chat (Anthropic's count_tokens): no budget, so a prompt too long to run still
        has its count."""
        self.models.lookup(ask.model)
        return len(self._plan(ask).prompt_token_ids)

    def _plan(self, ask: ChatAsk) -> ChatPlan:
        inputs = ask.inputs()
        try:
            return plan_chat(self.encoder, inputs, ask.new_tool_id)
        except ChatRequestError as error:
            raise invalid_request(str(error), param=ask.param_names.get(error.param, error.param)) from None

    def prepare_prompts(self, ask: PromptsAsk, headers: Mapping[str, str]) -> PreparedRequest:
        model, lora_id = self.models.lookup(ask.model)
        prompts = ask.prompts()
        structured: StructuredSpec | None = None
        speculation: SpeculationParams | None = None
        response_id = new_id("cmpl")
        salt = _cache_salt(headers, ask.cache_key)
        requests: list[EngineRequest] = []
        echoes: list[PromptEcho | None] = []
        for i, prompt in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            ids = self.encoder.encode(prompt, param)
            max_tokens = resolve_max_tokens(len(ids), ask.max_tokens, self.max_model_len, ask.behavior, param)
            echo = self._echo(ask, prompt, ids)
            echoes.append(echo)
            if i == 0:  # checked once, after the first prompt (as each prompt's SamplingParams used to)
                structured = response_format_spec(ask.sampling.response_format)
                speculation = _speculation(ask.sampling, self.encoder)
            params = build_sampling_params(
                ask.sampling,
                self.limits,
                max_tokens=max_tokens,
                best_of=ask.best_of,
                logprobs=ask.logprobs,
                prompt_logprobs=_prompt_logprobs(ask, echo),
                structured=structured,
                speculation=speculation,
            )
            params.include_stop_str_in_output = ask.include_stop_str_in_output
            requests.append(EngineRequest(f"{response_id}-{i}", ids, params, salt, param, lora_id))
        return PreparedRequest(
            model, response_id, _request_id(headers, response_id), requests, None, tuple(echoes)
        )

    def _echo(self, ask: PromptsAsk, prompt: str | list[int], ids: list[int]) -> PromptEcho | None:
        decode = self.encoder.tokenizer.decode
        if ask.echo:
            return PromptEcho(prompt if isinstance(prompt, str) else decode(ids), ids, 0)
        if ask.echo_last:
            start = max(0, len(ids) - ask.echo_last)
            return PromptEcho(decode(ids[start:]), ids[start:], start)
        return None


def _prompt_logprobs(ask: PromptsAsk, echo: PromptEcho | None) -> int | None:
    """How many alternatives each prompt token is scored with: an echo with logprobs needs the prompt's too."""
    counts = [ask.prompt_logprobs, ask.logprobs if echo is not None else None]
    present = [count for count in counts if count is not None]
    return max(present) if present else None


def _speculation(sampling: SamplingRequest, encoder: PromptEncoder) -> SpeculationParams | None:
    """The request's own speculation settings; None (the server's) for the many that bring none."""
    if sampling.prediction is None and sampling.prompt_lookup is None:
        return None
    return speculation_params(sampling, encoder)


def _request_id(headers: Mapping[str, str], generated: str) -> str:
    return headers.get("x-request-id") or generated


def _cache_salt(headers: Mapping[str, str], body_key: str | None) -> str | None:
    """prompt_cache_isolation_key from the body, else its header: tenants with different keys never share KV."""
    return body_key if body_key is not None else headers.get(CACHE_ISOLATION_HEADER)
