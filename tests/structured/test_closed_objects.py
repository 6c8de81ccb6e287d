"""Tool arguments are constrained to the properties the function declares (xgrammar's strict mode in vLLM)."""

from __future__ import annotations

import json
from typing import Any

import llguidance
import pytest

from ember.engine.testing import default_tokenizer_and_template
from ember.structured import spec_for_tool_choice
from ember.structured.closed_objects import closed_objects
from ember.structured.compiler import build_grammar_tokenizer
from ember.structured.grammar import grammar_for
from ember.structured.tools import GENERIC

ADDRESS = {"type": "object", "properties": {"street": {"type": "string"}}}
PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "stops": {"type": "array", "items": ADDRESS},
        "home": {"anyOf": [ADDRESS, {"type": "null"}]},
        "extra": {"type": "object", "additionalProperties": {"type": "integer"}},
        "mixed": {"allOf": [ADDRESS, {"properties": {"zip": {"type": "string"}}}]},
    },
    "required": ["city"],
}


def test_declared_objects_close_and_objects_that_speak_of_others_stay_as_they_are() -> None:
    closed = closed_objects(PARAMETERS)
    properties = closed["properties"]
    assert closed["additionalProperties"] is False
    assert properties["stops"]["items"]["additionalProperties"] is False
    assert properties["home"]["anyOf"][0]["additionalProperties"] is False
    assert properties["extra"]["additionalProperties"] == {"type": "integer"}
    assert "additionalProperties" not in properties["mixed"]["allOf"][0], "allOf parts stay open"
    assert "additionalProperties" not in PARAMETERS and "additionalProperties" not in ADDRESS, "input unchanged"
    assert closed_objects({"type": "object"}) == {"type": "object"}, "free-form arguments stay free"


@pytest.fixture(scope="module")
def grammar_tokenizer() -> llguidance.LLTokenizer:
    tokenizer, _ = default_tokenizer_and_template()
    return build_grammar_tokenizer(tokenizer, [2])


@pytest.mark.parametrize(
    ("arguments", "accepted"),
    [
        ({"city": "Paris"}, True),
        ({"city": "Paris", "stops": [{"street": "Rue Cler"}]}, True),
        ({"city": "Paris", "extra": {"anything": 3}}, True),
        ({"city": "Paris", "unit": "celsius"}, False),
        ({"city": "Paris", "stops": [{"street": "Rue Cler", "floor": 2}]}, False),
    ],
)
def test_a_required_call_cannot_carry_undeclared_arguments(
    grammar_tokenizer: llguidance.LLTokenizer, arguments: dict[str, Any], accepted: bool
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}]
    spec = spec_for_tool_choice(tools, "required", GENERIC, parallel_tool_calls=False)
    assert spec is not None
    matcher = llguidance.LLMatcher(grammar_tokenizer, grammar_for(spec, grammar_tokenizer), log_level=0)
    tokenizer, _ = default_tokenizer_and_template()
    call = json.dumps({"name": "get_weather", "arguments": arguments})
    text = f"{GENERIC.list_prefix}{call}{GENERIC.list_suffix}"  # the default model's (generic) tool format
    ok = matcher.consume_tokens(tokenizer.encode(text)) and not matcher.is_error()
    assert ok == accepted, (text, matcher.get_error())
