"""Tool calling for chat templates that know nothing of tools: ember writes the tools, the past calls and the
tool results into ordinary messages, in one compact format the model can read and the parser reads back.

The format (docs/decisions.md, "Tool calls on templates without tool support"), close to the one SmolLM2
was instruction-tuned on:
- the tools, one JSON object a line (name, description, parameters with their keywords in one order),
  between <tools> and </tools>, inside SmolLM2's own function-calling instruction under tool_choice auto (a
  one-line "call now" under required / named), appended to the system message (a new system message when
  there is none; the first user message when the template has no system role);
- a call: `<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`, all calls of a turn in one list;
  past assistant calls are rendered that way after the assistant's text;
- a tool result: a user turn of `<tool_response>\n...\n</tool_response>` blocks, the results of one turn
  together, in the order of the calls.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ember.chat.template import ChatTemplate, ChatTemplateError
from ember.structured import GENERIC, FunctionTool

_SYSTEM_PROBE = "\ue000ember-system-probe\ue000"

# Under tool_choice auto the reply opens a call when the model gives opening `<tool_call>` at least this
# probability at the reply's first token (structured/opening.py); measured on the default model
# (docs/decisions.md, "#14: tool_choice auto on the default model"). `ember serve --tool-call-threshold` and a
# request's `tool_call_threshold` override it.
DEFAULT_CALL_THRESHOLD = 0.015
# Right after tool results the model's first-token mass on `<` is an echo of `<tool_response>`, not a call
# (measured on the default model: 0.22-0.54 on `<`, 0.001-0.003 on the whole `<tool_call>` marker), so there
# the first token opens a call only when the model is certain; a call later in the text still goes through.
AFTER_RESULTS_CALL_THRESHOLD = 1.0


def call_threshold(messages: Sequence[Mapping[str, Any]], threshold: float) -> float:
    """The opening threshold of the next reply: `threshold`, or AFTER_RESULTS_CALL_THRESHOLD right after tool
    results."""
    if messages and messages[-1].get("role") == "tool":
        return max(threshold, AFTER_RESULTS_CALL_THRESHOLD)
    return threshold


def tools_instruction(tools: Sequence[FunctionTool], forced: Sequence[FunctionTool], parallel: bool) -> str:
    """The text that shows the model its tools and how to call them. `forced`: the tools tool_choice makes
    it call (empty under auto)."""
    lines = [json.dumps(_tool_object(tool), ensure_ascii=False) for tool in tools]
    call = (
        f'{GENERIC.list_prefix}{{"name": "<tool name>", "arguments": {{<arguments>}}}}{GENERIC.list_suffix}'
    )
    tool_lines = "<tools>\n" + "\n".join(lines) + "\n</tools>\n"
    several = " To call several tools, put several calls in the list." if parallel else ""
    if len(forced) == 1 and len(tools) > 1:
        return f"You can use these tools:\n{tool_lines}Call the tool {forced[0].name} now: reply with {call}.{several}"
    if forced:
        return f"You can use these tools:\n{tool_lines}Call a tool now: reply with {call}.{several}"
    # Under auto: SmolLM2's own function-calling system prompt (its model card's), with text answers allowed
    # where it says to refuse. Of five wordings measured (docs/decisions.md, "#14: one decision whichever SDK
    # asks"), it separates the prompts that need a tool from those that need none best on both prompt sets.
    calls = "one or more function/tool calls" if parallel else "one function/tool call"
    return (
        "You are an expert in composing functions. You are given a question and a set of possible functions. "
        f"Based on the question, you will need to make {calls} to achieve the purpose. If none of the "
        f"functions can be used, answer in plain text.\n{tool_lines}The output MUST strictly adhere to the "
        f"following format: {call}. If no function call is needed, answer in plain text."
    )


def _tool_object(tool: FunctionTool) -> dict[str, Any]:
    shown: dict[str, Any] = {"name": tool.name}
    if tool.description:
        shown["description"] = tool.description
    shown["parameters"] = canonical_schema(tool.parameters)
    return shown


# JSON-schema keywords shown first, in this order; the others follow sorted. Clients that mean the same schema
# send its keys in different orders (LangChain: properties, required, type; the OpenAI and Anthropic docs:
# type, properties, required), and the prompt, hence the model's choice, must not depend on that.
_SCHEMA_KEY_ORDER = ("type", "description", "enum", "const", "format", "properties", "items", "required")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")  # name -> schema: names keep order
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def canonical_schema(schema: Any) -> Any:
    """`schema` with its keywords in one order, at every level; property names keep the client's order (the
    order of a function's arguments means something)."""
    if not isinstance(schema, Mapping):
        return schema
    rank = {key: i for i, key in enumerate(_SCHEMA_KEY_ORDER)}
    ordered: dict[str, Any] = {}
    for key in sorted(schema, key=lambda k: (rank.get(k, len(rank)), k)):
        value = schema[key]
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            value = {name: canonical_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [canonical_schema(sub) for sub in value]
        elif isinstance(value, Mapping):  # items, additionalProperties, not, if/then/else, ...
            value = canonical_schema(value)
        ordered[key] = value
    return ordered


def calls_text(calls: Sequence[Mapping[str, Any]]) -> str:
    """Past tool calls (OpenAI's shape, arguments decoded to objects) as the model writes them."""
    objects = []
    for call in calls:
        function = call["function"]
        objects.append({"name": function["name"], "arguments": function.get("arguments") or {}})
    body = ", ".join(json.dumps(o, ensure_ascii=False) for o in objects)
    return f"{GENERIC.list_prefix}{body}{GENERIC.list_suffix}"


def generic_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The conversation without tool roles or tool_calls fields: assistant calls written after the
    assistant's text, each run of tool results one user turn. `messages` come from messages_for_template."""
    converted: list[dict[str, Any]] = []
    results: list[str] = []
    for message in messages:
        if message.get("role") == "tool":
            results.append(f"<tool_response>\n{_text(message.get('content'))}\n</tool_response>")
            continue
        if results:
            converted.append({"role": "user", "content": "\n".join(results)})
            results = []
        copy = {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")}
        calls = message.get("tool_calls")
        if calls:
            text = _text(message.get("content"))
            copy["content"] = (text + "\n" if text else "") + calls_text(calls)
        converted.append(copy)
    if results:
        converted.append({"role": "user", "content": "\n".join(results)})
    return converted


def with_instruction(
    messages: list[dict[str, Any]], instruction: str, template_source: str
) -> list[dict[str, Any]]:
    """`instruction` merged into the system message (added as one when there is none), or into the first
    user message when the template has no system role."""
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        system = _text(out[0].get("content"))
        out[0]["content"] = f"{system}\n\n{instruction}" if system else instruction
        return out
    if has_system_role(template_source):
        return [{"role": "system", "content": instruction}, *out]
    for message in out:
        if message.get("role") == "user":
            message["content"] = f"{instruction}\n\n{_text(message.get('content'))}"
            return out
    return [{"role": "user", "content": instruction}, *out]


@functools.lru_cache(maxsize=32)
def has_system_role(template_source: str) -> bool:
    """Whether the template renders a system message's text (some raise on the role or drop it)."""
    try:
        template = ChatTemplate(template_source)
        rendered = template.render(
            [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hi"}]
        )
    except ChatTemplateError:
        return False
    return _SYSTEM_PROBE in rendered


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(content)
