"""Function tools from the API, and the grammars of tool calls: strict (tool_choice required / named: the
whole output is calls) and lazy (tool_choice auto: free text, constrained once the model opens a call).

How a model writes a call depends on its chat template family; ToolCallSyntax describes it once, for both the
grammars here and the parsers in ember.chat.tool_parsers. GENERIC is ember's own format for templates that
have none (docs/decisions.md, "Tool calls on templates without tool support").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ember.structured.closed_objects import closed_objects
from ember.structured.grammar import JSON_FORMAT_OPTIONS, grammar_for
from ember.structured.limits import check_json_depth
from ember.structured.spec import OpeningChoice, ReasoningSection, StructuredSpec

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class ToolCallSyntax:
    """How a template family writes tool calls: list_prefix call (separator call)* list_suffix, where a call
    is call_prefix {"name": ..., arguments_key: {...}} call_suffix."""

    family: str
    call_prefix: str = ""
    call_suffix: str = ""
    separator: str = ""
    list_prefix: str = ""
    list_suffix: str = ""
    arguments_key: str = "arguments"


HERMES = ToolCallSyntax("hermes", call_prefix="<tool_call>\n", call_suffix="\n</tool_call>", separator="\n")
LLAMA3_JSON = ToolCallSyntax("llama3_json", separator="; ", arguments_key="parameters")
MISTRAL = ToolCallSyntax("mistral", separator=", ", list_prefix="[TOOL_CALLS][", list_suffix="]")
# <tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>: the form SmolLM2 was instruction-tuned on,
# one block holding every call of the reply. The grammar also takes the newlines SmolLM2 puts inside the list.
GENERIC = ToolCallSyntax("generic", separator=", ", list_prefix="<tool_call>[", list_suffix="]</tool_call>")
GENERIC_TRIGGER = "<tool_call>"


@dataclass(frozen=True)
class FunctionTool:
    name: str
    parameters: dict[str, Any]
    description: str | None = None
    strict: bool = False


def parse_tools(tools: list[dict[str, Any]] | None) -> list[FunctionTool]:
    """OpenAI `tools` (type function, name, JSON-schema parameters) validated; ValueError names the entry."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ValueError("tools must be a list")
    parsed: list[FunctionTool] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ValueError(f"{where}.type must be 'function'")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ValueError(f"{where}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise ValueError(
                f"{where}.function.name must be 1-64 letters, digits, underscores, dots or dashes"
            )
        if any(t.name == name for t in parsed):
            raise ValueError(f"{where}.function.name {name!r} is defined twice")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ValueError(f"{where}.function.parameters must be a JSON schema of type object")
        strict = bool(function.get("strict", False))
        try:
            check_json_depth(parameters, "JSON schema")  # before json.dumps, which recurses
            grammar_for(StructuredSpec("json_schema", json.dumps(parameters), strict=strict))
        except ValueError as error:
            raise ValueError(f"{where}.function.parameters: {error}") from None
        description = function.get("description")
        parsed.append(
            FunctionTool(name, parameters, description if isinstance(description, str) else None, strict)
        )
    return parsed


def forced_tools(tools: list[FunctionTool], tool_choice: str | dict[str, Any] | None) -> list[FunctionTool]:
    """The tools the output must call: [] when the model may answer in text (auto / none / no choice)."""
    if tool_choice is None or tool_choice in ("auto", "none"):
        return []
    if tool_choice in ("required", "any"):
        if not tools:
            raise ValueError(f"tool_choice {tool_choice!r} needs at least one tool in tools")
        return tools
    if isinstance(tool_choice, dict):
        kind = tool_choice.get("type")
        if kind in ("auto", "none"):  # Anthropic spellings
            return []
        if kind == "any":
            return forced_tools(tools, "any")
        # OpenAI: {"type": "function", "function": {"name": ...}}; Anthropic: {"type": "tool", "name": ...}
        named = tool_choice.get("function") if kind == "function" else tool_choice if kind == "tool" else None
        name = named.get("name") if isinstance(named, dict) else None
        if not isinstance(name, str):
            raise ValueError(
                "tool_choice must name a function: {'type': 'function', 'function': {'name': ...}}"
            )
        chosen = [t for t in tools if t.name == name]
        if not chosen:
            raise ValueError(f"tool_choice names function {name!r}, which is not in tools")
        return chosen
    raise ValueError(
        f"tool_choice must be 'auto', 'none', 'required' or a named function, got {tool_choice!r}"
    )


def spec_for_tool_choice(
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    syntax: ToolCallSyntax = HERMES,
    parallel_tool_calls: bool = True,
    reasoning: ReasoningSection | None = None,
) -> StructuredSpec | None:
    """A grammar that makes the whole output (after any `reasoning`) tool calls in `syntax`, with arguments
    valid per each schema; None when the model may answer in text. ValueError names a bad tool definition
    or tool_choice."""
    chosen = forced_tools(parse_tools(tools), tool_choice)
    if not chosen:
        return None
    if syntax == GENERIC:
        lark = f"start: {json.dumps(GENERIC_TRIGGER)} calls\n" + _generic_calls(chosen, parallel_tool_calls)
    else:
        call = f"{_lark_string(syntax.call_prefix)} %json {_calls_schema(chosen, syntax)} "
        call += _lark_string(syntax.call_suffix)
        more = f" ({_lark_string(syntax.separator)} call)*" if parallel_tool_calls else ""
        lark = (
            f"start: {_lark_string(syntax.list_prefix)} call{more} {_lark_string(syntax.list_suffix)}\n"
            f"call: {call}\n"
        )
    spec = StructuredSpec("lark", lark, reasoning=reasoning)
    grammar_for(spec)
    return spec


def lazy_spec_for_tools(
    tools: list[dict[str, Any]] | None,
    parallel_tool_calls: bool = True,
    reasoning: ReasoningSection | None = None,
    call_threshold: float | None = None,
) -> StructuredSpec:
    """tool_choice auto in the GENERIC format: any text, and once the text writes `<tool_call>` the rest is
    forced to be valid calls of the listed tools (then the reply ends). Until the trigger the mask allows
    every token (measured: ~0.02 ms a step on SmolLM2's vocabulary), so a model that answers in words is
    not steered by the grammar at all.

    `call_threshold` (without `reasoning`): the reply's first token chooses by rule, not by sampling: a call
    when the model gives opening `<tool_call>` at least this probability, text otherwise
    (structured/opening.py). The grammar then reads a reply that starts with `<` as a call."""
    chosen = parse_tools(tools)
    if not chosen:
        raise ValueError("tools must not be empty")
    trigger = _regex_literal(GENERIC_TRIGGER)
    opening = None
    if call_threshold is not None and reasoning is None:
        opening = OpeningChoice(GENERIC_TRIGGER, call_threshold)
    # One lexeme either way, so the lexer never has to split text from the trigger after the fact: text
    # without the trigger (the reply may end there), or text that ends at the trigger's first occurrence.
    # With an opening choice, text never starts with the trigger's first character: a reply that does is
    # the call the rule chose, which the grammar then spells out.
    if opening is None:
        text, then_trigger = "(?s:.*)", f"(?s:.*){trigger}"
    else:
        first = _regex_literal(GENERIC_TRIGGER[0])
        text, then_trigger = f"([^{first}](?s:.*))?", f"({trigger}|[^{first}](?s:.*){trigger})"
    lark = (
        "start: TEXT | TEXT_THEN_TRIGGER calls\n"
        f"TEXT: /{text}/ & ~/(?s:.*){trigger}(?s:.*)/\n"
        f"TEXT_THEN_TRIGGER: /{then_trigger}/ & ~/(?s:.*){trigger}(?s:.+)/\n"
    ) + _generic_calls(chosen, parallel_tool_calls)
    spec = StructuredSpec("lark", lark, reasoning=reasoning, opening=opening)
    grammar_for(spec)
    return spec


def _generic_calls(chosen: list[FunctionTool], parallel: bool) -> str:
    """The rule `calls`: the GENERIC list after its trigger, one call or (parallel) several."""
    more = ' ("," (" " | "\\n") call)*' if parallel else ""
    return (
        f'calls: "[" "\\n"? call{more} "\\n"? {json.dumps(GENERIC.list_suffix)}\n'
        f"call: %json {_calls_schema(chosen, GENERIC)}\n"
    )


def _calls_schema(chosen: list[FunctionTool], syntax: ToolCallSyntax) -> str:
    """The JSON schema of one call object of any of `chosen`, as the grammar embeds it."""
    schema: dict[str, Any] = {"anyOf": [_call_schema(t, syntax.arguments_key) for t in chosen]}
    if len(chosen) == 1:
        schema = schema["anyOf"][0]
    schema["x-guidance"] = dict(JSON_FORMAT_OPTIONS, lenient=not all(t.strict for t in chosen))
    return json.dumps(schema)


def _regex_literal(text: str) -> str:
    """`text` inside a Lark /regex/: metacharacters and the slash escaped."""
    return re.sub(r"([\\^$.|?*+()\[\]{}/])", r"\\\1", text)


def _call_schema(tool: FunctionTool, arguments_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        # only the declared arguments (structured/closed_objects.py says why)
        "properties": {"name": {"const": tool.name}, arguments_key: closed_objects(tool.parameters)},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _lark_string(text: str) -> str:
    """A Lark literal; an empty one matches nothing, so it becomes the empty sequence."""
    return json.dumps(text) if text else ""
