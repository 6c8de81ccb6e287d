"""No silently ignored parameters (#14): every field the request models of /v1/completions, /v1/chat/completions,
/v1/messages and /v1/embeddings declare is probed on a live tiny-model server, and each changes the response in
the way it promises (a request with it and one without differ accordingly) or is refused with a 400 naming it.
A field added to a model without a probe fails test_every_declared_field_has_a_probe."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from field_probes import DROP, SCHEMA, SHARED_PROBES, Probe, Route, inert, is_schema_json, probe_model
from live_server import TINY_MODEL, RunningServer
from tools_server import THINKING_TEMPLATE, start_template_server

from ember.server.anthropic.protocol import MessagesRequest
from ember.server.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

THINKING_MODEL = "tiny-thinking"
USER = [{"role": "user", "content": "Say hi"}]
PREFILL = [*USER, {"role": "assistant", "content": "Hello there"}]
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"], "additionalProperties": False}}}]  # fmt: skip
ANTHROPIC_TOOLS = [{"name": "get_time", "input_schema": TOOLS[0]["function"]["parameters"]}]


class Servers:
    def __init__(self, tiny: RunningServer, thinking: RunningServer) -> None:
        self.tiny = httpx.Client(base_url=f"{tiny.url}/v1", timeout=120)
        self.thinking = httpx.Client(base_url=f"{thinking.url}/v1", timeout=120)

    def route(self, name: str, thinking: bool = False) -> Route:
        client, model = (self.thinking, THINKING_MODEL) if thinking else (self.tiny, TINY_MODEL)
        if name == "completions":
            return Route(client, "/completions", {"model": model, "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}, False)  # fmt: skip
        if name == "chat":
            return Route(client, "/chat/completions", {"model": model, "messages": USER, "max_tokens": 8, "temperature": 0}, True)  # fmt: skip
        if name == "messages":
            return MessagesRoute(client, "/messages", {"model": model, "messages": USER, "max_tokens": 8, "temperature": 0}, True)  # fmt: skip
        return Route(client, "/embeddings", {"model": model, "input": "The quick brown fox"}, False)


class MessagesRoute(Route):
    """/v1/messages: Anthropic's shapes (the error names the field in its message; there is no param)."""

    def refused(self, param: str, status: int = 400, **fields: Any) -> dict[str, Any]:
        response = self.client.post(self.path, json=self.body(**fields))
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert param in error["message"], error
        return error

    def text(self, response: dict[str, Any], index: int = 0) -> str:
        return "".join(block.get("text", "") for block in response["content"] if block["type"] == "text")


@pytest.fixture(scope="module")
def servers(tiny_server: RunningServer) -> Iterator[Servers]:
    thinking = start_template_server(THINKING_MODEL, THINKING_TEMPLATE)
    yield Servers(tiny_server, thinking)
    thinking.stop()


# -- /v1/completions only ----------------------------------------------------------------------------------


def _probe_prompt(route: Route) -> None:
    assert route.text(route.ok(prompt="Once upon a time")) != route.text(route.ok())


def _probe_best_of(route: Route) -> None:
    best = route.ok(best_of=3, n=1, temperature=1.0, seed=3, logprobs=0)["choices"]
    assert len(best) == 1
    route.refused("best_of", best_of=1, n=2)


def _probe_echo(route: Route) -> None:
    assert route.text(route.ok(echo=True)) == route.base["prompt"] + route.text(route.ok())


def _probe_echo_last(route: Route) -> None:
    assert route.text(route.ok(echo_last=1)) == " fox" + route.text(route.ok())


def _probe_completion_logprobs(field: str) -> Probe:
    def probe(route: Route) -> None:
        logprobs = route.ok(**{field: 2})["choices"][0]["logprobs"]
        assert len(logprobs["tokens"]) == 8 and all(len(top) == 2 for top in logprobs["top_logprobs"])
        assert route.ok()["choices"][0]["logprobs"] is None

    return probe


def _probe_max_completion_tokens(route: Route) -> None:
    assert route.ok(max_tokens=DROP, max_completion_tokens=3)["usage"]["completion_tokens"] == 3


def _probe_suffix(route: Route) -> None:
    route.refused("suffix", suffix=" the end")


COMPLETION_PROBES: dict[str, Probe] = {
    **SHARED_PROBES,
    "prompt": _probe_prompt,
    "best_of": _probe_best_of,
    "echo": _probe_echo,
    "echo_last": _probe_echo_last,
    "logprobs": _probe_completion_logprobs("logprobs"),
    "top_logprobs": _probe_completion_logprobs("top_logprobs"),
    "max_completion_tokens": _probe_max_completion_tokens,
    "suffix": _probe_suffix,
}


# -- /v1/chat/completions only -----------------------------------------------------------------------------


def _prompt_tokens(route: Route, **fields: Any) -> int:
    return route.ok(**fields)["usage"]["prompt_tokens"]


def _probe_messages(route: Route) -> None:
    # The tiny model's greedy reply hardly depends on the question; the prompt it saw does.
    story = route.ok(messages=[{"role": "user", "content": "Tell me a story about a dragon"}])["usage"]
    said_hi = route.ok()["usage"]
    assert story.get("prompt_tokens", story.get("input_tokens")) > said_hi.get(
        "prompt_tokens", said_hi.get("input_tokens")
    )


def _probe_chat_logprobs(route: Route) -> None:
    assert len(route.ok(logprobs=True)["choices"][0]["logprobs"]["content"]) == 8
    assert route.ok()["choices"][0]["logprobs"] is None


def _probe_top_logprobs(route: Route) -> None:
    content = route.ok(logprobs=True, top_logprobs=2)["choices"][0]["logprobs"]["content"]
    assert all(len(item["top_logprobs"]) == 2 for item in content)
    route.refused("top_logprobs", top_logprobs=2)


def _probe_add_generation_prompt(route: Route) -> None:
    assert _prompt_tokens(route, add_generation_prompt=False) < _prompt_tokens(route)


def _probe_continue_final_message(route: Route) -> None:
    # Continued, the final message stays open: no end-of-turn tokens after "Hello there".
    open_turn = _prompt_tokens(
        route, messages=PREFILL, continue_final_message=True, add_generation_prompt=False
    )
    assert open_turn < _prompt_tokens(route, messages=PREFILL, add_generation_prompt=False)


def _on_thinking_template(**fields: Any) -> Probe:
    """A template switch: the thinking template renders differently with the field than without."""

    def probe(route: Route) -> None:
        assert route.base["model"] == THINKING_MODEL  # the test passes the thinking server's route
        assert _prompt_tokens(route, **fields) != _prompt_tokens(route)

    return probe


def _probe_include_reasoning(route: Route) -> None:
    # The thinking template opens <think> and the tiny model never closes it: the whole reply is reasoning.
    assert route.ok()["choices"][0]["message"]["reasoning_content"]
    hidden = route.ok(include_reasoning=False)["choices"][0]["message"]
    assert "reasoning_content" not in hidden and not hidden["content"]
    streamed = route.stream(include_reasoning=False)
    assert not any("reasoning_content" in c["choices"][0]["delta"] for c in streamed if c["choices"])


def _calls(route: Route, **fields: Any) -> list[Any]:
    return route.ok(max_tokens=64, tools=TOOLS, **fields)["choices"][0]["message"].get("tool_calls") or []


def _probe_tools(route: Route) -> None:
    (call,) = _calls(route, tool_choice="required", parallel_tool_calls=False)
    assert call["function"]["name"] == "get_time"
    assert "tool_calls" not in route.ok()["choices"][0]["message"]


def _probe_tool_choice(route: Route) -> None:
    assert _calls(route, tool_choice="required") and not _calls(route, tool_choice="none")


def _probe_parallel_tool_calls(route: Route) -> None:
    def grammar(parallel: bool) -> str:
        body = {
            "tools": TOOLS,
            "tool_choice": "required",
            "parallel_tool_calls": parallel,
            "raw_output": True,
        }
        return route.ok(**body)["choices"][0]["raw_output"]["grammar"]

    assert grammar(False) != grammar(True)
    assert len(_calls(route, tool_choice="required", parallel_tool_calls=False)) == 1


def _probe_generic_tools(route: Route) -> None:
    route.refused("tools", tools=TOOLS, generic_tools=False)


def _probe_chat_echo(route: Route) -> None:
    prefill = {"messages": PREFILL, "continue_final_message": True, "add_generation_prompt": False}
    continued = route.text(route.ok(**prefill))
    assert route.text(route.ok(**prefill, echo=True)) == "Hello there" + continued
    assert route.text(route.ok(echo=True)) == route.text(route.ok())  # the final message is the user's


def _probe_deprecated(field: str, value: Any) -> Probe:
    def probe(route: Route) -> None:
        route.refused(field, **{field: value})

    return probe


CHAT_PROBES: dict[str, Probe] = {
    **SHARED_PROBES,
    "messages": _probe_messages,
    "max_completion_tokens": _probe_max_completion_tokens,
    "logprobs": _probe_chat_logprobs,
    "top_logprobs": _probe_top_logprobs,
    "add_generation_prompt": _probe_add_generation_prompt,
    "continue_final_message": _probe_continue_final_message,
    "chat_template_kwargs": _on_thinking_template(chat_template_kwargs={"enable_thinking": False}),
    "tools": _probe_tools,
    "generic_tools": _probe_generic_tools,
    "tool_choice": _probe_tool_choice,
    "parallel_tool_calls": _probe_parallel_tool_calls,
    "reasoning_effort": _on_thinking_template(reasoning_effort="none"),
    "echo": _probe_chat_echo,
    "thinking": _on_thinking_template(thinking={"type": "disabled"}),
    "include_reasoning": _probe_include_reasoning,
    "functions": _probe_deprecated("functions", [{"name": "f", "parameters": {}}]),
    "function_call": _probe_deprecated("function_call", "auto"),
}
THINKING_PROBES = {
    ("chat", "chat_template_kwargs"),
    ("chat", "reasoning_effort"),
    ("chat", "thinking"),
    ("chat", "include_reasoning"),
    ("messages", "thinking"),
}


# -- /v1/messages ------------------------------------------------------------------------------------------


def _input_tokens(route: Route, **fields: Any) -> int:
    return route.ok(**fields)["usage"]["input_tokens"]


def _probe_system(route: Route) -> None:
    # SmolLM's template has a default system prompt of its own: a given one replaces it.
    assert _input_tokens(route, system="Answer in French.") != _input_tokens(route)


def _probe_anthropic_tools(route: Route) -> None:
    def blocks(**fields: Any) -> list[str]:
        return [b["type"] for b in route.ok(max_tokens=64, tools=ANTHROPIC_TOOLS, **fields)["content"]]

    assert "tool_use" in blocks(tool_choice={"type": "any"})
    assert "tool_use" not in blocks(tool_choice={"type": "none"})


def _probe_thinking(route: Route) -> None:
    disabled = _input_tokens(route, thinking={"type": "disabled"})
    assert disabled != _input_tokens(route, thinking={"type": "enabled", "budget_tokens": 1024})


def _probe_output_config(field: str, value: dict[str, Any]) -> Probe:
    def probe(route: Route) -> None:
        assert is_schema_json(route.text(route.ok(max_tokens=16, **{field: value})))
        assert not is_schema_json(route.text(route.ok(max_tokens=16)))

    return probe


def _probe_anthropic_max_tokens(route: Route) -> None:
    assert route.ok(max_tokens=3)["usage"]["output_tokens"] == 3
    route.refused("max_tokens", max_tokens=DROP)


def _probe_stop_sequences(route: Route) -> None:
    text = route.text(route.ok())
    stopped = route.ok(stop_sequences=[text[3:7]])
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == text[3:7]


def _probe_anthropic_sampling(**fields: Any) -> Probe:
    """Anthropic has no seed: a truncation to one candidate makes two hot runs agree, which they do not."""

    def probe(route: Route) -> None:
        hot = {"temperature": 1.0}
        assert route.text(route.ok(**hot)) != route.text(route.ok(**hot))
        assert route.text(route.ok(**hot, **fields)) == route.text(route.ok(**hot, **fields))

    return probe


def _probe_anthropic_temperature(route: Route) -> None:
    assert route.text(route.ok(temperature=0)) == route.text(route.ok(temperature=0))
    assert route.text(route.ok(temperature=1.0)) != route.text(route.ok(temperature=1.0))


def _probe_anthropic_stream(route: Route) -> None:
    response = route.client.post(route.path, json=route.body(stream=True))
    events = re.findall(r"^event: (\w+)", response.text, flags=re.MULTILINE)
    assert events[0] == "message_start" and events[-1] == "message_stop"


def _probe_anthropic_raw_output(route: Route) -> None:
    response = route.ok(raw_output=True)
    raw = response["raw_output"]
    assert "<|im_start|>user\nSay hi" in raw["prompt_fragments"][0] and raw["completion"] == route.text(
        response
    )
    assert (
        len(raw["completion_token_ids"]) == response["usage"]["output_tokens"]
        and "raw_output" not in route.ok()
    )
    streamed = route.client.post(route.path, json=route.body(stream=True, raw_output=True)).text
    delta = next(line for line in streamed.splitlines() if line.startswith('data: {"type":"message_delta"'))
    assert json.loads(delta[6:])["raw_output"]["completion_token_ids"] == raw["completion_token_ids"]


def _probe_anthropic_model(route: Route) -> None:
    route.refused("no-such-model", status=404, model="no-such-model")


MESSAGES_PROBES: dict[str, Probe] = {
    "model": _probe_anthropic_model,
    "messages": _probe_messages,
    "system": _probe_system,
    "tools": _probe_anthropic_tools,
    "tool_choice": _probe_anthropic_tools,
    "thinking": _probe_thinking,
    "generic_tools": lambda route: bool(route.refused("tools", tools=ANTHROPIC_TOOLS, generic_tools=False)),
    "output_config": _probe_output_config(
        "output_config", {"format": {"type": "json_schema", "schema": SCHEMA}}
    ),
    "output_format": _probe_output_config("output_format", {"type": "json_schema", "schema": SCHEMA}),
    "cache_control": inert("cache_control", {"type": "ephemeral"}),  # ember caches every prefix anyway
    "max_tokens": _probe_anthropic_max_tokens,
    "stop_sequences": _probe_stop_sequences,
    "temperature": _probe_anthropic_temperature,
    "top_p": _probe_anthropic_sampling(top_p=1e-9),
    "top_k": _probe_anthropic_sampling(top_k=1),
    "stream": _probe_anthropic_stream,
    "metadata": inert("metadata", {"user_id": "user-1"}),
    "raw_output": _probe_anthropic_raw_output,
}


# -- /v1/embeddings ----------------------------------------------------------------------------------------


def _vector(route: Route, **fields: Any) -> Any:
    return route.ok(**fields)["data"][0]["embedding"]


EMBEDDING_PROBES: dict[str, Probe] = {
    "model": probe_model,
    "input": lambda route: _vector(route, input="Something else") != _vector(route),
    "encoding_format": lambda route: (
        len(base64.b64decode(_vector(route, encoding_format="base64"))) == 4 * len(_vector(route))
    ),
    "dimensions": lambda route: len(_vector(route, dimensions=8)) == 8,
    "user": lambda route: _vector(route, user="end-user-7") == _vector(route),
}
# The embedding probes are expressions: their truth is asserted by the test.

PROBES = {
    "completions": (CompletionRequest, COMPLETION_PROBES),
    "chat": (ChatCompletionRequest, CHAT_PROBES),
    "messages": (MessagesRequest, MESSAGES_PROBES),
    "embeddings": (EmbeddingRequest, EMBEDDING_PROBES),
}


def test_every_declared_field_has_a_probe() -> None:
    for route, (model, probes) in PROBES.items():
        assert set(model.model_fields) == set(probes), route


@pytest.mark.parametrize(
    ("route", "field"), [(route, field) for route, (_, probes) in PROBES.items() for field in sorted(probes)]
)
def test_field_changes_the_response_or_is_refused(servers: Servers, route: str, field: str) -> None:
    probe = PROBES[route][1][field]
    result = probe(servers.route(route, thinking=(route, field) in THINKING_PROBES))
    assert result is None or result is True
