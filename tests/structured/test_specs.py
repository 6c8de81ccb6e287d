"""response_format / tools / tool_choice -> StructuredSpec: accepted spellings and clear errors (API 400s)."""

from __future__ import annotations

import json

import pytest

from ember.structured import (
    HERMES,
    MISTRAL,
    StructuredSpec,
    forced_tools,
    parse_tools,
    spec_for_tool_choice,
    spec_from_response_format,
)

PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def tool(name: str, parameters: object = None) -> dict:
    function: dict = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def test_accepted_response_formats() -> None:
    assert spec_from_response_format(None) is None
    assert spec_from_response_format({"type": "text"}) is None
    assert spec_from_response_format({"type": "json_object"}) == StructuredSpec(
        "json_schema", '{"type": "object"}'
    )
    openai = spec_from_response_format(
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    )
    assert openai == StructuredSpec("json_schema", json.dumps(PERSON), strict=True)
    fireworks = spec_from_response_format({"type": "json_schema", "schema": PERSON})
    assert fireworks is not None and json.loads(fireworks.source) == PERSON
    object_with_schema = spec_from_response_format({"type": "json_object", "schema": PERSON})
    assert object_with_schema is not None and json.loads(object_with_schema.source) == PERSON
    assert spec_from_response_format(
        {"type": "grammar", "grammar": 'root ::= "yes" | "no"'}
    ) == StructuredSpec("gbnf", 'root ::= "yes" | "no"')
    assert spec_from_response_format({"type": "regex", "regex": "[0-9]+"}) == StructuredSpec(
        "regex", "[0-9]+"
    )
    assert spec_from_response_format({"type": "choice", "choices": ["a", "b"]}) == StructuredSpec(
        "choice", '["a", "b"]'
    )


def test_unenforceable_keywords_are_ignored_unless_strict() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    assert spec_from_response_format({"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    with pytest.raises(ValueError, match="uniqueItems"):
        spec_from_response_format(
            {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
        )


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "xml"}, "response_format.type must be one of"),
        ("json", "response_format must be an object"),
        ({"type": "json_schema"}, "response_format.json_schema is required"),
        ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": PERSON}}, "json_schema.name"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
            "must be a JSON schema object",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
            "Invalid type: nope",
        ),
        (
            {"type": "json_schema", "schema": {"type": "integer", "minimum": 5, "maximum": 1}},
            "minimum \\(5\\) is greater than maximum \\(1\\)",
        ),
        (
            {"type": "json_schema", "schema": {"type": "string", "pattern": "(["}},
            "invalid JSON schema: regex parse",
        ),
        ({"type": "json_schema", "schema": {"$ref": "#/$defs/missing"}}, "does not exist"),
        ({"type": "grammar", "grammar": 'root ::= "a" missing'}, "invalid grammar.*missing"),
        ({"type": "grammar", "grammar": 'expr ::= "a"'}, "invalid grammar.*root"),
        ({"type": "grammar", "grammar": ""}, "response_format.grammar must be a non-empty string"),
        ({"type": "regex", "regex": "(unclosed"}, "invalid regex"),
        ({"type": "choice", "choices": []}, "response_format.choices"),
    ],
)
def test_invalid_response_formats_name_the_problem(response_format: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec_from_response_format(response_format)  # type: ignore[arg-type]


def test_tool_choice_modes() -> None:
    tools = [tool("a", PERSON), tool("b")]
    assert spec_for_tool_choice(tools, "auto") is None
    assert spec_for_tool_choice(tools, "none") is None
    assert spec_for_tool_choice(tools, None) is None
    assert [t.name for t in forced_tools(parse_tools(tools), "required")] == ["a", "b"]
    assert [
        t.name for t in forced_tools(parse_tools(tools), {"type": "function", "function": {"name": "b"}})
    ] == ["b"]
    assert [t.name for t in forced_tools(parse_tools(tools), {"type": "tool", "name": "a"})] == [
        "a"
    ]  # Anthropic
    hermes = spec_for_tool_choice(tools, "any", HERMES, parallel_tool_calls=False)
    assert hermes is not None and hermes.kind == "lark" and "<tool_call>" in hermes.source
    mistral = spec_for_tool_choice(tools, "required", MISTRAL)
    assert mistral is not None and "[TOOL_CALLS][" in mistral.source


@pytest.mark.parametrize(
    ("tools", "tool_choice", "message"),
    [
        ([], "required", "needs at least one tool"),
        ([tool("a")], {"type": "function", "function": {"name": "zzz"}}, "'zzz', which is not in tools"),
        ([tool("a")], "sometimes", "tool_choice must be"),
        ([tool("a")], {"type": "function"}, "tool_choice must name a function"),
        ([tool("")], "auto", r"tools\[0\].function.name"),
        ([tool("a"), tool("a")], "auto", "defined twice"),
        ([{"type": "retrieval"}], "auto", r"tools\[0\].type must be 'function'"),
        ([tool("a", {"type": "array"})], "auto", "must be a JSON schema of type object"),
        (
            [tool("a", {"type": "object", "properties": {"x": {"type": "wat"}}})],
            "auto",
            r"tools\[0\].function.parameters",
        ),
    ],
)
def test_invalid_tools_and_tool_choice_name_the_problem(
    tools: list, tool_choice: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        spec_for_tool_choice(tools, tool_choice)  # type: ignore[arg-type]
