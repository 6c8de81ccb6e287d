"""The requests benchmarks/soak.py mixes: ordinary traffic (streams, whole responses, streams the client leaves,
grammar-constrained replies, embeddings, training-data uploads, uploads cut off mid-body) and the bad inputs an
audit of ember threw at it, each of which must be a 4xx with an error envelope."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Literal

Expect = Literal["ok", "4xx"]
Mode = Literal["whole", "stream", "disconnect", "upload", "upload_abort"]


@dataclass(frozen=True)
class Case:
    kind: str  # the row of the report
    path: str  # under the server's root, e.g. /v1/chat/completions
    expect: Expect
    mode: Mode = "whole"
    body: Any = None  # JSON-serialisable, sent as JSON
    raw: bytes | None = None  # sent as it is, with content type application/json (bodies json cannot write)
    files: dict[str, Any] = field(default_factory=dict)  # multipart upload
    data: dict[str, str] = field(default_factory=dict)  # multipart text fields

    @property
    def label(self) -> str:
        """What a finding shows of the request: the fields that make it this case (a bad input's bad part)."""
        if self.raw is not None:
            return self.raw[-60:].decode(errors="replace")
        if isinstance(self.body, dict):
            keys = [k for k in self.body if k not in ("model", "messages", "max_tokens", "stream", "prompt")]
            return json.dumps({k: self.body[k] for k in keys})[:120]
        return ""


TOPICS = ("bread", "rivers", "owls", "tea", "chess", "volcanoes", "the moon", "bicycles")
TRAINING_ROW = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}


def ordinary(rng: random.Random, model: str) -> Case:
    topic = rng.choice(TOPICS)
    chat = {"model": model, "messages": [{"role": "user", "content": f"Tell me about {topic}."}]}
    pick = rng.random()
    if pick < 0.25:
        return Case("chat stream", "/v1/chat/completions", "ok", "stream", chat | stream_fields(rng, 8, 64))
    if pick < 0.40:
        body = {"model": model, "prompt": f"A fact about {topic}:", "max_tokens": rng.randint(4, 32)}
        return Case("completion", "/v1/completions", "ok", body=body)
    if pick < 0.55:
        body = {"model": model, "prompt": f"A story about {topic}:", "ignore_eos": True} | stream_fields(
            rng, 200, 400
        )
        return Case("disconnect", "/v1/completions", "ok", "disconnect", body)
    if pick < 0.62:
        body = {"model": model, "max_tokens": rng.randint(8, 48), "stream": True}
        body["messages"] = chat["messages"]
        return Case("anthropic stream", "/v1/messages", "ok", "stream", body)
    if pick < 0.77:
        return Case("grammar", "/v1/chat/completions", "ok", body=chat | {"max_tokens": 48} | grammar(rng))
    if pick < 0.87:
        texts = [f"{rng.choice(TOPICS)} number {rng.randint(0, 999)}" for _ in range(rng.randint(1, 4))]
        return Case("embeddings", "/v1/embeddings", "ok", body={"model": model, "input": texts})
    if pick < 0.94:
        rows = "".join(json.dumps(TRAINING_ROW) + "\n" for _ in range(rng.randint(3, 20))).encode()
        files = {"file": ("train.jsonl", rows, "application/jsonl")}
        return Case("upload", "/v1/files", "ok", "upload", files=files, data={"purpose": "fine-tune"})
    if pick < 0.97:
        files = {"file": ("bad.jsonl", b'{"messages": "not a list"}\n{oops\n', "application/jsonl")}
        return Case(
            "upload (invalid)", "/v1/files", "4xx", "upload", files=files, data={"purpose": "fine-tune"}
        )
    return Case("upload (cut off)", "/v1/files", "ok", "upload_abort")


def stream_fields(rng: random.Random, low: int, high: int) -> dict[str, Any]:
    return {"stream": True, "max_tokens": rng.randint(low, high)}


def grammar(rng: random.Random) -> dict[str, Any]:
    formats: list[dict[str, Any]] = [
        {
            "type": "json_schema",
            "json_schema": {
                "name": "fact",
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 20}, "year": {"type": "integer"}},
                    "required": ["name", "year"],
                },
            },
        },
        {"type": "json_object"},
        {"type": "regex", "regex": "[a-z]{3,12}( [a-z]{3,12}){0,3}"},
        {"type": "choice", "choices": ["yes", "no", "maybe"]},
        {"type": "grammar", "grammar": 'root ::= "The answer is " ("yes" | "no") "."'},
    ]
    return {"response_format": rng.choice(formats)}


def bad_input(rng: random.Random, model: str) -> Case:
    """One of the audit's bad inputs: each must be refused with a 4xx, never a 5xx or a crash."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    builders = [
        lambda: Case("bad: JSON 1000 deep", "/v1/chat/completions", "4xx", raw=_deep_json(model, 1000)),
        lambda: Case("bad: NaN sampling", "/v1/chat/completions", "4xx", raw=_nan_body(rng, chat)),
        lambda: Case("bad: sampling range", "/v1/chat/completions", "4xx", body=chat | _out_of_range(rng)),
        lambda: Case("bad: wrong types", "/v1/chat/completions", "4xx", body=chat | _wrong_type(rng)),
        lambda: Case("bad: grammar", "/v1/chat/completions", "4xx", body=chat | _bad_grammar(rng)),
        lambda: Case("bad: $ref chain 5000", "/v1/chat/completions", "4xx", body=chat | _ref_chain(5000)),
        lambda: Case("bad: schema 900 deep", "/v1/chat/completions", "4xx", body=chat | _deep_schema(900)),
        lambda: Case("bad: fine-tuning types", *_bad_job(rng, model)),
    ]
    if rng.random() < 0.05:  # seconds of server work each: rare, as a careless client would send them
        return Case("bad: 66,000 choices", "/v1/chat/completions", "4xx", body=chat | _huge_choices(66_000))
    return rng.choice(builders)()


def _deep_json(model: str, depth: int) -> bytes:
    return f'{{"model": "{model}", "messages": {"[" * depth}{"]" * depth}}}'.encode()


def _nan_body(rng: random.Random, chat: dict[str, Any]) -> bytes:
    name = rng.choice(["temperature", "top_p", "repetition_penalty", "presence_penalty", "min_p"])
    value = rng.choice(["NaN", "Infinity", "-Infinity"])
    return json.dumps(chat)[:-1].encode() + f', "{name}": {value}}}'.encode()


def _out_of_range(rng: random.Random) -> dict[str, Any]:
    return rng.choice(
        [
            {"repetition_penalty": 1e-300},
            {"temperature": -1},
            {"top_p": 7},
            {"frequency_penalty": 1e308},
            {"max_tokens": -5},
            {"n": 100_000},
            {"logprobs": True, "top_logprobs": 10_000},
        ]
    )


def _wrong_type(rng: random.Random) -> dict[str, Any]:
    return rng.choice(
        [
            {"messages": "hi"},
            {"max_tokens": "ten"},
            {"stop": [1, 2]},
            {"logit_bias": {"not-a-token": 1}},
            {"messages": [{"role": "wizard", "content": "hi"}]},
            {"response_format": {"type": "choice", "choices": "yes"}},
        ]
    )


def _bad_grammar(rng: random.Random) -> dict[str, Any]:
    chain = "\n".join(f"r{i} ::= r{i + 1}" for i in range(5000)) + '\nr5000 ::= "a"'
    formats = [
        {"type": "regex", "regex": "a{1000000}"},
        {"type": "regex", "regex": "((a|aa){100}){100}"},
        {"type": "regex", "regex": "[unclosed"},
        {"type": "grammar", "grammar": 'root ::= "a"{1000000}'},
        {"type": "grammar", "grammar": "root ::= r0\n" + chain},
        {"type": "grammar", "grammar": "root ::= ???"},
        {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a{1000000}$"}},
        },
        {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"anyOf": [_object(i) for i in range(5000)]}},
        },
    ]
    return {"response_format": rng.choice(formats)}


def _object(i: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"k{i}": {"type": "integer"}}, "required": [f"k{i}"]}


def _ref_chain(length: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(length)}
    defs[f"d{length}"] = {"type": "string"}
    schema = {"$defs": defs, "$ref": "#/$defs/d0"}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "chain", "schema": schema}}}


def _deep_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}}


def _huge_choices(count: int) -> dict[str, Any]:
    return {"response_format": {"type": "choice", "choices": [f"option {i}" for i in range(count)]}}


def _bad_job(rng: random.Random, model: str) -> tuple[str, Expect, Mode, dict[str, Any]]:
    base = {"model": model, "training_file": "file-does-not-exist"}
    openai_bodies = [base | {"hyperparameters": 5}, base | {"method": 5}, base | {"suffix": ["x"]}]
    if rng.random() < 0.5:
        return "/v1/fine_tuning/jobs", "4xx", "whole", rng.choice(openai_bodies)
    body = {"dataset": "accounts/fireworks/datasets/none", "baseModel": model, "outputModel": 5}
    return "/v1/accounts/fireworks/supervisedFineTuningJobs", "4xx", "whole", body
