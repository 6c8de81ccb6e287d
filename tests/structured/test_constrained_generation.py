"""Constrained decoding end to end on the default model: the output always satisfies the constraint."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable

import jsonschema
import pytest
from structured_cases import chat_prompt

from ember.chat.tool_parsers import arguments_are_json, assemble, parser_for_syntax
from ember.engine.llm import LLM
from ember.engine.outputs import CompletionOutput
from ember.engine.sampling_params import SamplingParams
from ember.structured import (
    HERMES,
    LLAMA3_JSON,
    MISTRAL,
    StructuredSpec,
    ToolCallSyntax,
    spec_for_tool_choice,
    spec_from_response_format,
)

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": 0, "maximum": 99},
                    "b": {"type": "integer"},
                },
                "required": ["a", "b"],
            },
        },
    },
]


def test_json_object_mode_and_greedy_output_is_an_object(llm: LLM) -> None:
    spec = spec_from_response_format({"type": "json_object"})
    [output] = llm.generate(
        [chat_prompt("Give me a JSON object describing a cat.")],
        SamplingParams(max_tokens=120, temperature=0.0, structured=spec),
    )
    completion = output.outputs[0]
    if completion.finish_reason == "stop":
        assert isinstance(json.loads(completion.text), dict)
    else:  # free-form objects may not close within max_tokens; the prefix must still be an object's
        assert completion.text.startswith("{")


def test_gbnf_grammar_output_parses(llm: LLM) -> None:
    grammar = r"""
root   ::= "(" ws expr ws ")" | expr
expr   ::= term (ws op ws term)*
term   ::= [1-9] [0-9]?
op     ::= "+" | "-" | "*"
ws     ::= " "?
"""
    spec = spec_from_response_format({"type": "grammar", "grammar": grammar})
    params = [SamplingParams(max_tokens=24, temperature=1.0, seed=i, structured=spec) for i in range(4)]
    outputs = llm.generate([chat_prompt("Write an arithmetic expression.")] * 4, params)
    expression = re.compile(r"\( ?T( ?[-+*] ?T)* ?\)|T( ?[-+*] ?T)*".replace("T", r"[1-9][0-9]?"))
    # Cut by max_tokens: the whole text is still the start of a sentence (re.match took any text that began
    # with a digit), ending after a term, an operator or a space.
    started = re.compile(r"\(? ?T( ?[-+*] ?T)*( ?[-+*])? ?".replace("T", r"[1-9][0-9]?"))
    for output in outputs:
        text = output.outputs[0].text
        if output.outputs[0].finish_reason == "stop":
            assert expression.fullmatch(text), text
        else:
            assert started.fullmatch(text), text


def test_regex_and_choice(llm: LLM) -> None:
    regex = spec_from_response_format({"type": "regex", "regex": r"[A-Z]{3}-[0-9]{4}"})
    choice = spec_from_response_format({"type": "choice", "choices": ["yes", "no", "maybe"]})
    outputs = llm.generate(
        [chat_prompt("Give a code.")] * 3 + [chat_prompt("Is the sky blue?")] * 3,
        [SamplingParams(max_tokens=20, temperature=1.0, seed=i, structured=regex) for i in range(3)]
        + [SamplingParams(max_tokens=20, temperature=1.0, seed=i, structured=choice) for i in range(3)],
    )
    for output in outputs[:3]:
        assert re.fullmatch(r"[A-Z]{3}-[0-9]{4}", output.outputs[0].text)
        assert output.outputs[0].finish_reason == "stop"
    for output in outputs[3:]:
        assert output.outputs[0].text in ("yes", "no", "maybe")


@pytest.mark.parametrize("syntax", [HERMES, LLAMA3_JSON, MISTRAL], ids=lambda s: s.family)
def test_tool_choice_required_yields_schema_valid_arguments_streamed_and_whole(
    llm: LLM, syntax: ToolCallSyntax
) -> None:
    required = spec_for_tool_choice(WEATHER_TOOLS, "required", syntax, parallel_tool_calls=False)
    named = spec_for_tool_choice(
        WEATHER_TOOLS, {"type": "function", "function": {"name": "add"}}, syntax, parallel_tool_calls=False
    )
    parallel = spec_for_tool_choice(WEATHER_TOOLS, "any", syntax)
    assert required is not None and named is not None and parallel is not None
    prompt = chat_prompt("What's the weather in Paris, and what is 2 + 3?")
    specs = [required] * 3 + [named] * 2 + [parallel]
    params = [
        SamplingParams(max_tokens=80, temperature=0.9, seed=i, structured=s) for i, s in enumerate(specs)
    ]
    completions, streamed = generate_streamed(llm, [prompt] * len(params), params)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in WEATHER_TOOLS}
    for spec, completion, deltas in zip(specs, completions, streamed, strict=True):
        parsed = parser_for_syntax(syntax, counting_ids()).parse(completion.text)
        stream = parser_for_syntax(syntax, counting_ids()).stream()
        assert assemble([d for text in deltas for d in stream.feed(text)] + stream.finish()) == parsed
        assert parsed.tool_calls and parsed.content == "", completion.text
        if spec is parallel and completion.finish_reason == "length":  # the model may keep calling
            complete = [call for call in parsed.tool_calls if arguments_are_json(call)]
        else:
            assert completion.finish_reason == "stop", completion.text
            assert spec is parallel or len(parsed.tool_calls) == 1
            complete = parsed.tool_calls
        assert complete
        for call in complete:
            assert spec is not named or call.name == "add"
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def generate_streamed(
    llm: LLM, prompts: list[str], params: list[SamplingParams]
) -> tuple[list[CompletionOutput], list[list[str]]]:
    """Final outputs plus the text deltas each request streamed, step by step."""
    engine = llm.engine
    ids = [f"streamed-{id(params)}-{i}" for i in range(len(prompts))]
    for request_id, prompt, p in zip(ids, prompts, params, strict=True):
        engine.add_request(request_id, llm.tokenizer.encode(prompt), p)
    deltas: dict[str, list[str]] = {request_id: [] for request_id in ids}
    finals: dict[str, CompletionOutput] = {}
    while engine.has_unfinished():
        for output in engine.step():
            deltas[output.request_id].append(output.outputs[0].delta_text)
            if output.finished:
                finals[output.request_id] = output.outputs[0]
    return [finals[i] for i in ids], [deltas[i] for i in ids]


def counting_ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def test_mixed_batch_leaves_unconstrained_rows_unchanged(llm: LLM) -> None:
    prompts = [chat_prompt("Tell me about the sea."), chat_prompt("Name three fruits.")]
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    alone = llm.generate(prompts, greedy)
    spec = spec_from_response_format({"type": "json_object"})
    constrained = SamplingParams(max_tokens=12, temperature=0.0, structured=spec)
    mixed = llm.generate(
        [prompts[0], prompts[0], prompts[1], prompts[1]], [greedy, constrained, greedy, constrained]
    )
    assert [o.outputs[0].token_ids for o in alone] == [
        mixed[0].outputs[0].token_ids,
        mixed[2].outputs[0].token_ids,
    ]
    assert mixed[1].outputs[0].text.startswith("{")


def test_engine_rejects_an_invalid_grammar_before_admitting_it(llm: LLM) -> None:
    with pytest.raises(ValueError, match="grammar"):
        llm.generate(["hi"], SamplingParams(structured=StructuredSpec("gbnf", 'root ::= "a" missing')))
    with pytest.raises(ValueError, match="JSON schema"):
        llm.generate(["hi"], SamplingParams(structured=StructuredSpec("json_schema", '{"type": "nope"}')))
    assert not llm.engine.has_unfinished()
