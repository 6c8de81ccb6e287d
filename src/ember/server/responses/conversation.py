"""Responses input items <-> the chat pipeline's messages.

A request's `input` (a string, or a list of items: messages, function_call, function_call_output, reasoning,
item_reference) is checked and normalized into the items OpenAI lists under /input_items (each with an id and a
status); a conversation of such items (the previous response's, then this request's) becomes chat messages in
OpenAI's chat shapes, which chat.plan renders through the model's template. Every bad item is a 400 naming
`input[i]...`."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from ember.server.common.errors import invalid_request

_INPUT_ROLES = ("user", "system", "developer")
_TEXT_PARTS = {"input_text", "output_text", "text"}  # `text`: what chat clients send; read as input_text
_MEDIA_PARTS = {"input_image": "image", "input_file": "file", "input_audio": "audio"}
_HOSTED_CALLS = (
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "web_search_call",
    "image_generation_call",
    "code_interpreter_call",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
    "custom_tool_call",
    "custom_tool_call_output",
    "tool_search_call",
    "tool_search_output",
    "compaction",
)

ItemLookup = Callable[[str], "dict[str, Any] | None"]  # a stored item by id, among those the caller sees


def new_item_id(prefix: str) -> str:
    """An item id in OpenAI's style (`msg_...`, `fc_...`, `rs_...`)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def input_items(value: str | list[Any] | None, lookup: ItemLookup) -> list[dict[str, Any]]:
    """The request's `input` as normalized items (ids assigned, item_references resolved)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_message("user", [{"type": "input_text", "text": value}])]
    return [_normalized(item, f"input[{i}]", lookup) for i, item in enumerate(value)]


def _message(role: str, content: list[dict[str, Any]], item_id: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id or new_item_id("msg"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": content,
    }


def _field(item: dict[str, Any], name: str, where: str, kind: type = str, required: bool = True) -> Any:
    value = item.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind):
        wanted = {str: "a string", list: "a list", dict: "an object"}.get(kind, kind.__name__)
        problem = "is required" if value is None else f"must be {wanted}"
        raise invalid_request(f"{where}.{name} {problem}", param=f"{where}.{name}")
    return value


def _normalized(item: Any, where: str, lookup: ItemLookup) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise invalid_request(f"{where} must be an object (an input item)", param=where)
    kind = item.get("type", "message" if "role" in item else None)
    item_id = _field(item, "id", where, required=False)
    if kind == "message":
        return _message_item(item, where, item_id)
    if kind == "function_call":
        return {
            "id": item_id or new_item_id("fc"),
            "type": "function_call",
            "call_id": _field(item, "call_id", where),
            "name": _field(item, "name", where),
            "arguments": _json_arguments(_field(item, "arguments", where), f"{where}.arguments"),
            "status": "completed",
        }
    if kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str):
            output = _text_of(_field(item, "output", where, list), f"{where}.output", ("input_text", "text"))
        return {
            "id": item_id or new_item_id("fco"),
            "type": "function_call_output",
            "call_id": _field(item, "call_id", where),
            "output": output,
            "status": "completed",
        }
    if kind == "reasoning":
        if item.get("encrypted_content") is not None:
            raise invalid_request(
                f"{where}.encrypted_content: this server never encrypts reasoning, so it cannot read "
                "encrypted reasoning; send the reasoning item it returned (its content) instead",
                param=f"{where}.encrypted_content",
            )
        summary = _field(item, "summary", where, list, required=False) or []
        content = _field(item, "content", where, list, required=False) or []
        _text_of(summary, f"{where}.summary", ("summary_text",))
        _text_of(content, f"{where}.content", ("reasoning_text",))
        return {
            "id": item_id or new_item_id("rs"),
            "type": "reasoning",
            "summary": summary,
            "content": content,
        }
    if kind == "item_reference":
        found = lookup(_field(item, "id", where))
        if found is None:
            raise invalid_request(
                f"{where}: no stored item with id {item['id']!r} (items of responses created with store "
                "false are not kept)",
                param=f"{where}.id",
            )
        return found
    if kind in _HOSTED_CALLS:
        raise invalid_request(
            f"{where}: items of type {kind!r} belong to tools this server does not run; only function tools "
            "(function_call and function_call_output items) are available",
            param=f"{where}.type",
        )
    raise invalid_request(f"{where}.type: unknown input item type {kind!r}", param=f"{where}.type")


def _json_arguments(arguments: str, where: str) -> str:
    try:
        json.loads(arguments)
    except (ValueError, RecursionError):
        raise invalid_request(
            f"{where} is not valid JSON (a function call's arguments are a JSON text)", param=where
        ) from None
    return arguments


def _message_item(item: dict[str, Any], where: str, item_id: str | None) -> dict[str, Any]:
    role = item.get("role")
    if role not in (*_INPUT_ROLES, "assistant"):
        raise invalid_request(
            f"{where}.role must be one of user, system, developer, assistant; got {role!r}",
            param=f"{where}.role",
        )
    content = item.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = _text_of(
            _field(item, "content", where, list), f"{where}.content", tuple(_TEXT_PARTS) + ("refusal",)
        )
    part = {"type": "output_text", "text": text, "annotations": []} if role == "assistant" else None
    return _message(role, [part or {"type": "input_text", "text": text}], item_id)


def _text_of(parts: list[Any], where: str, allowed: tuple[str, ...]) -> str:
    """The text of a list of content parts; media and unknown parts are 400s naming them."""
    texts: list[str] = []
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise invalid_request(f"{at} must be an object (a content part)", param=at)
        kind = part.get("type")
        if kind in _MEDIA_PARTS:
            raise invalid_request(
                f"{at}: {_MEDIA_PARTS[kind]} inputs are not supported by this server (the served model reads "
                "text only)",
                param=f"{at}.type",
            )
        if kind not in allowed:
            raise invalid_request(
                f"{at}.type must be one of {', '.join(sorted(allowed))}; got {kind!r}", param=f"{at}.type"
            )
        key = "refusal" if kind == "refusal" else "text"
        texts.append(_field(part, key, at))
    return "".join(texts)


def item_text(item: dict[str, Any]) -> str:
    """The text of a normalized message or reasoning item."""
    if item["type"] == "reasoning":
        parts = item.get("content") or item.get("summary") or []
        return "".join(part.get("text", "") for part in parts)
    return "".join(part.get("text", part.get("refusal", "")) for part in item["content"])


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation of normalized items as chat messages: instructions as the system message, consecutive
    assistant output (reasoning, text, function calls) as one assistant turn, outputs as tool messages."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    reasoning: str | None = None
    calls: set[str] = set()
    assistant_open = False  # the last message is an assistant turn that later output items extend
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            reasoning = (reasoning or "") + item_text(item)
            continue
        if kind == "message" and item["role"] != "assistant":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": item_text(item)})
            assistant_open = False
        elif kind == "function_call_output":
            if item["call_id"] not in calls:
                raise invalid_request(
                    f"no function_call with call_id {item['call_id']!r} precedes its function_call_output",
                    param="input",
                )
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
            assistant_open = False
        else:  # an assistant message or a function_call: part of the assistant's turn
            if not assistant_open or (kind == "message" and messages[-1].get("tool_calls")):
                messages.append({"role": "assistant", "content": ""})
                assistant_open = True
            turn = messages[-1]
            if kind == "message":
                turn["content"] += item_text(item)
            else:
                calls.add(item["call_id"])
                function = {"name": item["name"], "arguments": item["arguments"]}
                turn.setdefault("tool_calls", []).append(
                    {"id": item["call_id"], "type": "function", "function": function}
                )
            if reasoning is not None:
                turn["reasoning_content"] = turn.get("reasoning_content", "") + reasoning
                reasoning = None
    return messages
