"""A Responses request's tools, tool_choice, text.format and reasoning in the chat pipeline's (OpenAI chat)
shapes; anything the Responses API defines that ember cannot do is a 400 naming it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ember.server.common.errors import invalid_request

# chat.plan names chat parameters; these are the Responses names of the same things.
PARAM_NAMES = {
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "tools": "tools",
    "tool_choice": "tool_choice",
}
_FORMAT_TYPES = ("text", "json_object", "json_schema")
_CHOICE_MODES = ("none", "auto", "required")


@dataclass(frozen=True)
class ChatOptions:
    tools: list[dict[str, Any]] | None
    tool_choice: Any
    response_format: dict[str, Any] | None
    reasoning_effort: str | None


def function_tools(tools: list[Any] | None) -> list[dict[str, Any]]:
    """Responses function tools ({type, name, parameters, strict, description}) as chat tools."""
    converted: list[dict[str, Any]] = []
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_request(f"{where} must be an object", param=where)
        kind = tool.get("type")
        if kind != "function":
            raise invalid_request(
                f"{where}.type: tools of type {kind!r} are not available on this server (it hosts no tools); "
                "only function tools, which your code runs",
                param=f"{where}.type",
            )
        if not isinstance(tool.get("name"), str):
            raise invalid_request(f"{where}.name is required (a string)", param=f"{where}.name")
        function = {"name": tool["name"]}
        for key, kind in (("description", str), ("parameters", dict), ("strict", bool)):
            if tool.get(key) is None:
                continue
            if not isinstance(tool[key], kind):
                wanted = {str: "a string", dict: "a JSON schema object", bool: "a boolean"}[kind]
                raise invalid_request(f"{where}.{key} must be {wanted}", param=f"{where}.{key}")
            function[key] = tool[key]
        if tool.get("defer_loading"):
            raise invalid_request(
                f"{where}.defer_loading: tool search is not available on this server; send the tool without it",
                param=f"{where}.defer_loading",
            )
        if any(caller != "direct" for caller in tool.get("allowed_callers") or []):
            raise invalid_request(
                f"{where}.allowed_callers: programmatic tool calling is not available on this server; only "
                "direct calls",
                param=f"{where}.allowed_callers",
            )
        if tool.get("output_schema") is not None:
            if not isinstance(tool["output_schema"], dict):
                raise invalid_request(
                    f"{where}.output_schema must be a JSON schema object", param=f"{where}.output_schema"
                )
            # The model learns what the function returns the only way a chat template shows it: in the text.
            returns = f"Returns JSON matching this schema: {json.dumps(tool['output_schema'])}"
            function["description"] = f"{function.get('description', '')}\n{returns}".strip()
        converted.append({"type": "function", "function": function})
    return converted


def _named(tool: dict[str, Any], where: str) -> str:
    if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise invalid_request(
            f"{where}: only function tools can be chosen here ({{'type': 'function', 'name': ...}})",
            param="tool_choice",
        )
    return tool["name"]


def chat_tool_choice(tool_choice: Any, tools: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """(chat tool_choice, the tools the reply may call). allowed_tools narrows the tools to its list."""
    if tool_choice is None or tool_choice in _CHOICE_MODES:
        return tool_choice, tools
    if not isinstance(tool_choice, dict):
        raise invalid_request(
            f"tool_choice must be one of {', '.join(_CHOICE_MODES)} or an object, got {tool_choice!r}",
            param="tool_choice",
        )
    kind = tool_choice.get("type")
    if kind == "function":
        return {"type": "function", "function": {"name": _named(tool_choice, "tool_choice")}}, tools
    if kind == "allowed_tools":
        mode = tool_choice.get("mode")
        if mode not in ("auto", "required"):
            raise invalid_request("tool_choice.mode must be 'auto' or 'required'", param="tool_choice.mode")
        listed = tool_choice.get("tools")
        if not isinstance(listed, list) or not listed:
            raise invalid_request("tool_choice.tools must be a non-empty list", param="tool_choice.tools")
        names = [_named(t, f"tool_choice.tools[{i}]") for i, t in enumerate(listed) if isinstance(t, dict)]
        if len(set(names)) != len(listed):
            raise invalid_request(
                "tool_choice.tools must list distinct function tools ({'type': 'function', 'name': ...})",
                param="tool_choice.tools",
            )
        allowed = [tool for tool in tools if tool["function"]["name"] in names]
        unknown = set(names) - {tool["function"]["name"] for tool in allowed}
        if unknown:
            raise invalid_request(
                f"tool_choice.tools names tools that are not in tools: {', '.join(sorted(unknown))}",
                param="tool_choice.tools",
            )
        return mode, allowed
    raise invalid_request(
        f"tool_choice of type {kind!r} is not available on this server: it hosts no tools; choose a function "
        "tool, allowed_tools, or none / auto / required",
        param="tool_choice",
    )


def response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """text.format as a chat response_format; text.verbosity other than medium is refused."""
    if text is None:
        return None
    verbosity = text.get("verbosity")
    if verbosity not in (None, "medium"):
        raise invalid_request(
            f"text.verbosity {verbosity!r} is not available on this server (it cannot steer the length of the "
            "model's answer); leave it out or send 'medium'",
            param="text.verbosity",
        )
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict) or form.get("type") not in _FORMAT_TYPES:
        kind = form.get("type") if isinstance(form, dict) else form
        raise invalid_request(
            f"text.format.type must be one of {', '.join(_FORMAT_TYPES)}, got {kind!r}",
            param="text.format.type",
        )
    if form["type"] == "text":
        return None
    if form["type"] == "json_object":
        return {"type": "json_object"}
    if not isinstance(form.get("name"), str):
        raise invalid_request("text.format.name is required (a string)", param="text.format.name")
    if not isinstance(form.get("schema"), dict):
        raise invalid_request(
            "text.format.schema is required (a JSON schema object)", param="text.format.schema"
        )
    schema = {
        key: form[key] for key in ("name", "schema", "description", "strict") if form.get(key) is not None
    }
    return {"type": "json_schema", "json_schema": schema}


def reasoning_effort(reasoning: dict[str, Any] | None) -> str | None:
    """reasoning.effort for the template's thinking switch. summary is accepted: ember returns the model's
    reasoning itself (reasoning_text), never a summary of it (docs/decisions.md)."""
    if reasoning is None:
        return None
    for name in ("summary", "generate_summary"):
        if reasoning.get(name) not in (None, "auto", "concise", "detailed"):
            raise invalid_request(
                f"reasoning.{name} must be auto, concise or detailed", param=f"reasoning.{name}"
            )
    if reasoning.get("mode") not in (None, "standard"):
        raise invalid_request(
            f"reasoning.mode {reasoning['mode']!r} is not available on this server; send 'standard'",
            param="reasoning.mode",
        )
    if reasoning.get("context") not in (None, "auto", "all_turns"):
        raise invalid_request(
            f"reasoning.context {reasoning['context']!r} is not available: the model's template decides which "
            "past reasoning it shows; send 'auto'",
            param="reasoning.context",
        )
    effort = reasoning.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise invalid_request("reasoning.effort must be a string", param="reasoning.effort")
    return "high" if effort == "xhigh" else effort


def chat_options(
    tools: list[Any] | None, tool_choice: Any, text: dict[str, Any] | None, reasoning: dict[str, Any] | None
) -> ChatOptions:
    chat_tools = function_tools(tools)
    choice, callable_tools = chat_tool_choice(tool_choice, chat_tools)
    return ChatOptions(callable_tools or None, choice, response_format(text), reasoning_effort(reasoning))
