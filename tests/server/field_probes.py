"""What the request-field tests share: a small HTTP client over a live server that checks statuses, and the
probes of the sampling fields /v1/completions and /v1/chat/completions have in common (each a pair of requests
that differ only in one field, and what that field promises about the difference)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

DROP = object()  # a field value meaning: leave the base request's field out
LONG_PROMPT = " ".join(f"word{i}" for i in range(40))  # several KV blocks: prefix caching shows


@dataclass
class Route:
    """One generation route of the tiny server, with the base body its probes vary."""

    client: httpx.Client
    path: str
    base: dict[str, Any]
    is_chat: bool

    def body(self, **fields: Any) -> dict[str, Any]:
        merged = {**self.base, **fields}
        return {name: value for name, value in merged.items() if value is not DROP}

    def ok(self, **fields: Any) -> dict[str, Any]:
        response = self.client.post(self.path, json=self.body(**fields))
        assert response.status_code == 200, response.text
        return response.json()

    def refused(self, param: str, status: int = 400, **fields: Any) -> dict[str, Any]:
        response = self.client.post(self.path, json=self.body(**fields))
        assert response.status_code == status, response.text
        error = response.json()["error"]
        if status == 400:
            assert error["param"] == param, error
        return error

    def stream(self, **fields: Any) -> list[dict[str, Any]]:
        response = self.client.post(self.path, json=self.body(stream=True, **fields))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return [json.loads(line) for line in lines[:-1]]

    def text(self, response: dict[str, Any], index: int = 0) -> str:
        choice = response["choices"][index]
        return (choice["message"]["content"] or "") if self.is_chat else choice["text"]

    def chat_prompt(self, text: str) -> dict[str, Any]:
        if self.is_chat:
            return {"messages": [{"role": "user", "content": text}]}
        return {"prompt": text}


Probe = Callable[[Route], None]


def _collapses_sampling(field: str, value: Any) -> Probe:
    """A truncation that leaves one candidate: two seeds agree with it, and disagree without it."""

    def probe(route: Route) -> None:
        hot = {"temperature": 1.5, "max_tokens": 6}
        free = [route.text(route.ok(**hot, seed=seed)) for seed in (1, 2)]
        kept = [route.text(route.ok(**hot, seed=seed, **{field: value})) for seed in (1, 2)]
        assert free[0] != free[1]
        assert kept[0] == kept[1]

    return probe


def _changes_greedy_text(**fields: Any) -> Probe:
    def probe(route: Route) -> None:
        assert route.text(route.ok(**fields)) != route.text(route.ok())

    return probe


def _probe_temperature(route: Route) -> None:
    assert route.text(route.ok(temperature=0)) == route.text(route.ok(temperature=0))
    assert route.text(route.ok(temperature=2.0, seed=1)) != route.text(route.ok(temperature=0))


def _probe_seed(route: Route) -> None:
    hot = {"temperature": 1.0}
    assert route.text(route.ok(**hot, seed=5)) == route.text(route.ok(**hot, seed=5))
    assert route.text(route.ok(**hot, seed=5)) != route.text(route.ok(**hot, seed=6))


def _probe_n(route: Route) -> None:
    assert len(route.ok(n=2)["choices"]) == 2 and len(route.ok()["choices"]) == 1


def _probe_max_tokens(route: Route) -> None:
    assert route.ok(max_tokens=3)["usage"]["completion_tokens"] == 3


def _probe_n_predict(route: Route) -> None:
    assert route.ok(max_tokens=DROP, n_predict=3)["usage"]["completion_tokens"] == 3
    route.refused("n_predict", max_tokens=5, n_predict=3)


def _forced_eos(**fields: Any) -> dict[str, Any]:
    return {"logit_bias": {"2": 100}, **fields}  # token 2 is <|im_end|>, the tiny model's end of sequence


def _probe_min_tokens(route: Route) -> None:
    assert route.ok(**_forced_eos())["usage"]["completion_tokens"] <= 1
    assert route.ok(**_forced_eos(min_tokens=3))["usage"]["completion_tokens"] >= 3


def _probe_ignore_eos(route: Route) -> None:
    assert route.ok(**_forced_eos())["choices"][0]["finish_reason"] == "stop"
    ignored = route.ok(**_forced_eos(ignore_eos=True, max_tokens=4))
    assert ignored["choices"][0]["finish_reason"] == "length" and ignored["usage"]["completion_tokens"] == 4


def _probe_skip_special_tokens(route: Route) -> None:
    forced = _forced_eos(ignore_eos=True, max_tokens=2)
    assert route.text(route.ok(**forced)) == ""
    assert route.text(route.ok(**forced, skip_special_tokens=False)) == "<|im_end|><|im_end|>"


def _probe_logit_bias(route: Route) -> None:
    ids = route.ok(logit_bias={"1000": 100}, return_token_ids=True)["choices"][0]["token_ids"]
    assert set(ids) == {1000}


def _greedy(route: Route) -> tuple[str, list[int]]:
    choice = route.ok(return_token_ids=True)["choices"][0]
    return route.text({"choices": [choice]}), choice["token_ids"]


def _probe_stop(route: Route) -> None:
    text, _ = _greedy(route)
    stop = text[3:7]
    choice = route.ok(stop=[stop])["choices"][0]
    assert route.text({"choices": [choice]}) == text[: text.index(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop


def _probe_include_stop_str_in_output(route: Route) -> None:
    text, _ = _greedy(route)
    stop = text[3:7]
    kept = route.text(route.ok(stop=[stop], include_stop_str_in_output=True))
    assert kept == text[: text.index(stop) + len(stop)]


def _probe_stop_token_ids(route: Route) -> None:
    _, ids = _greedy(route)
    choice = route.ok(stop_token_ids=[ids[1]], return_token_ids=True)["choices"][0]
    assert choice["stop_reason"] == ids[1] and choice["token_ids"] == ids[: ids.index(ids[1]) + 1]


def _probe_stream(route: Route) -> None:
    pieces = [chunk["choices"][0] for chunk in route.stream() if chunk["choices"]]
    if route.is_chat:
        streamed = "".join(piece["delta"].get("content") or "" for piece in pieces)
    else:
        streamed = "".join(piece["text"] for piece in pieces)
    assert streamed == route.text(route.ok())


def _probe_stream_options(route: Route) -> None:
    last = route.stream(stream_options={"include_usage": True})[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 8
    assert route.stream()[-1]["choices"] != []


def _probe_context_length_exceeded_behavior(route: Route) -> None:
    assert route.ok(max_tokens=100_000)["usage"]["completion_tokens"] > 0  # truncate: the default
    error = route.refused("max_tokens", context_length_exceeded_behavior="error", max_tokens=100_000)
    assert "context" in error["message"]


def _probe_perf_metrics_in_response(route: Route) -> None:
    assert "perf_metrics" in route.ok(perf_metrics_in_response=True) and "perf_metrics" not in route.ok()


def _probe_cache_isolation(field: str) -> Probe:
    def probe(route: Route) -> None:
        prompt = route.chat_prompt(f"{LONG_PROMPT} {field}")
        route.ok(**prompt)
        assert route.ok(**prompt)["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        isolated = route.ok(**prompt, **{field: f"tenant-{field}"})
        assert isolated["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

    return probe


def _probe_response_format(route: Route) -> None:
    text = route.text(route.ok(response_format={"type": "regex", "regex": "[0-9]{3}"}))
    assert re.fullmatch("[0-9]{3}", text)


def _probe_prediction(route: Route) -> None:
    text, _ = _greedy(route)
    no_lookup = {"prompt_lookup": {"mode": "off"}}  # n-gram drafts would count as accepted tokens too

    def accepted(**fields: Any) -> int:
        return route.ok(**no_lookup, **fields)["usage"]["completion_tokens_details"][
            "accepted_prediction_tokens"
        ]

    assert accepted(prediction={"type": "content", "content": text}) > 0 and accepted() == 0


def _probe_prompt_lookup(route: Route) -> None:
    # The tiny model's greedy text repeats itself: n-gram drafts from it are accepted, unless lookup is off.
    def accepted(mode: str) -> int:
        usage = route.ok(max_tokens=16, prompt_lookup={"mode": mode})["usage"]
        return usage["completion_tokens_details"]["accepted_prediction_tokens"]

    assert accepted("on") > 0 and accepted("off") == 0


def _probe_return_token_ids(route: Route) -> None:
    response = route.ok(return_token_ids=True)
    choice = response["choices"][0]
    assert len(choice["token_ids"]) == response["usage"]["completion_tokens"]
    prompt_ids = response["prompt_token_ids"] if route.is_chat else choice["prompt_token_ids"]
    assert len(prompt_ids) == response["usage"]["prompt_tokens"]
    assert "token_ids" not in route.ok()["choices"][0]


def _probe_prompt_logprobs(route: Route) -> None:
    response = route.ok(prompt_logprobs=2, return_token_ids=True)
    holder = response if route.is_chat else response["choices"][0]
    scores, prompt_ids = holder["prompt_logprobs"], holder["prompt_token_ids"]
    assert len(scores) == len(prompt_ids) and scores[0] is None
    assert str(prompt_ids[1]) in scores[1] and 2 <= len(scores[1]) <= 3
    assert "prompt_logprobs" not in route.ok() and "prompt_logprobs" not in route.ok()["choices"][0]
    route.refused("prompt_logprobs", prompt_logprobs=1, stream=True)


def _probe_raw_output(route: Route) -> None:
    response = route.ok(raw_output=True, return_token_ids=True)
    raw = response["choices"][0]["raw_output"]
    assert raw["completion_token_ids"] == response["choices"][0]["token_ids"]
    if route.is_chat:
        assert "<|im_start|>assistant\n" in raw["prompt_fragments"][0]
    else:
        assert raw["prompt_fragments"] == [route.base["prompt"]] and raw["completion"] == route.text(response)
    assert "raw_output" not in route.ok()["choices"][0]


SCHEMA = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"], "additionalProperties": False}  # fmt: skip


def _constraint(field: str, value: Any, check: Callable[[str], bool]) -> Probe:
    def probe(route: Route) -> None:
        assert check(route.text(route.ok(max_tokens=16, **{field: value})))
        assert not check(route.text(route.ok(max_tokens=16)))

    return probe


def is_schema_json(text: str) -> bool:
    try:
        return json.loads(text) in ({"a": "x"}, {"a": "y"})
    except json.JSONDecodeError:
        return False


def inert(field: str, value: Any) -> Probe:
    """An identifier that, in OpenAI's API too, changes no output: accepted, and the output is the same."""

    def probe(route: Route) -> None:
        assert route.text(route.ok(**{field: value})) == route.text(route.ok())

    return probe


def probe_model(route: Route) -> None:
    route.refused("model", status=404, model="no-such-model")


def _is_three_digits(text: str) -> bool:
    return re.fullmatch("[0-9]{3}", text) is not None


def _is_ab_or_cd(text: str) -> bool:
    return text in ("ab", "cd")


GBNF = 'root ::= "ab" | "cd"'

# Fields of GenerationRequest (both routes), each with its probe.
SHARED_PROBES: dict[str, Probe] = {
    "model": probe_model,
    "n": _probe_n,
    "max_tokens": _probe_max_tokens,
    "min_tokens": _probe_min_tokens,
    "temperature": _probe_temperature,
    "top_p": _collapses_sampling("top_p", 1e-9),
    "top_k": _collapses_sampling("top_k", 1),
    "min_p": _collapses_sampling("min_p", 1.0),
    "typical_p": _collapses_sampling("typical_p", 1e-9),
    "repetition_penalty": _changes_greedy_text(repetition_penalty=5.0),
    "presence_penalty": _changes_greedy_text(presence_penalty=2.0),
    "frequency_penalty": _changes_greedy_text(frequency_penalty=2.0),
    "logit_bias": _probe_logit_bias,
    "seed": _probe_seed,
    "stop": _probe_stop,
    "stop_token_ids": _probe_stop_token_ids,
    "ignore_eos": _probe_ignore_eos,
    "user": inert("user", "end-user-7"),
    "stream": _probe_stream,
    "stream_options": _probe_stream_options,
    "context_length_exceeded_behavior": _probe_context_length_exceeded_behavior,
    "perf_metrics_in_response": _probe_perf_metrics_in_response,
    "prompt_cache_isolation_key": _probe_cache_isolation("prompt_cache_isolation_key"),
    "skip_special_tokens": _probe_skip_special_tokens,
    "response_format": _probe_response_format,
    "prediction": _probe_prediction,
    "prompt_lookup": _probe_prompt_lookup,
    "include_stop_str_in_output": _probe_include_stop_str_in_output,
    "prompt_logprobs": _probe_prompt_logprobs,
    "return_token_ids": _probe_return_token_ids,
    "raw_output": _probe_raw_output,
    "cache_salt": _probe_cache_isolation("cache_salt"),
    "n_predict": _probe_n_predict,
    "guided_json": _constraint("guided_json", SCHEMA, is_schema_json),
    "guided_regex": _constraint("guided_regex", "[0-9]{3}", _is_three_digits),
    "guided_choice": _constraint("guided_choice", ["ab", "cd"], _is_ab_or_cd),
    "guided_grammar": _constraint("guided_grammar", GBNF, _is_ab_or_cd),
    "structured_outputs": _constraint("structured_outputs", {"regex": "[0-9]{3}"}, _is_three_digits),
    "grammar": _constraint("grammar", GBNF, _is_ab_or_cd),
    "json_schema": _constraint("json_schema", SCHEMA, is_schema_json),
    "metadata": inert("metadata", {"purpose": "test"}),
    "safety_identifier": inert("safety_identifier", "user-hash-1"),
    "prompt_cache_key": inert("prompt_cache_key", "conversation-1"),
}
