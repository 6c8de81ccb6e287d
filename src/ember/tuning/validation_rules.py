"""The checks on one row of an SFT dataset in the OpenAI / Fireworks chat format.

A row is `{"messages": [...], "tools": [...]?, "weight": number?}`. Each check returns `Problem`s carrying the
row's line and the index of the message at fault, so a user can go straight to it. The checks of the
function-calling parts (`tools` and each tool call) live in tool_call_rules.py; checks that span rows
(per-sample weight on all rows or none, example count, token counts) live in validation.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ember.tuning.dataset_report import Problem
from ember.tuning.json_wording import json_type, shown_json
from ember.tuning.tool_call_rules import check_tools, tool_call_error

ROLES = ("system", "user", "assistant", "tool")
IMAGE_PART_TYPES = ("image_url", "image", "input_image")


@dataclass(frozen=True)
class RowRules:
    """What the base model can take: a text-only model rejects image content parts."""

    supports_images: bool = False


def check_row(row: Any, line: int, rules: RowRules) -> list[Problem]:
    """Every problem of one parsed JSONL row (an empty list when the row is valid)."""
    if not isinstance(row, dict):
        return [Problem(line, None, "not_an_object", f"row must be a JSON object, got {json_type(row)}")]
    problems: list[Problem] = []
    if "weight" in row and not _is_non_negative_number(row["weight"]):
        problems.append(
            Problem(
                line,
                None,
                "invalid_sample_weight",
                f"top-level weight must be a non-negative number, got {shown_json(row['weight'])}",
            )
        )
    tool_names = check_tools(row, line, problems) if "tools" in row else None
    if "messages" not in row:
        problems.append(Problem(line, None, "missing_messages", "row has no 'messages' field"))
    elif not isinstance(row["messages"], list) or not row["messages"]:
        problems.append(Problem(line, None, "invalid_messages", "'messages' must be a non-empty list"))
    else:
        _ConversationChecker(line, rules, tool_names, problems).check(row["messages"])
    return problems


def has_trainable_message(messages: list[dict[str, Any]]) -> bool:
    """Whether some assistant message is trained on (weight absent or 1) in a row that passed `check_row`."""
    return any(m["role"] == "assistant" and m.get("weight", 1) != 0 for m in messages)


class _ConversationChecker:
    """Walks one row's messages in order, tracking what the next role may be and which tool calls are open."""

    def __init__(
        self, line: int, rules: RowRules, tool_names: set[str] | None, problems: list[Problem]
    ) -> None:
        self.line = line
        self.rules = rules
        self.tool_names = tool_names
        self.problems = problems

    def add(self, index: int | None, code: str, message: str) -> None:
        self.problems.append(Problem(self.line, index, code, message))

    def check(self, messages: list[Any]) -> None:
        previous_role: str | None = None  # role of the previous well-formed message; "?" after a broken one
        open_call_ids: set[str] | None = None  # calls made by the assistant message that opened a tool block
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                self.add(i, "invalid_message", f"message must be a JSON object, got {json_type(message)}")
                previous_role = "?"
                continue
            role = message.get("role")
            if role not in ROLES:
                what = "message has no role" if role is None else f"unknown role {shown_json(role)}"
                self.add(i, "unknown_role", f"{what}; expected one of {', '.join(ROLES)}")
                previous_role = "?"
                continue
            call_ids = self._check_tool_calls(i, role, message.get("tool_calls"))
            if previous_role != "?":
                self._check_order(i, role, previous_role, tool_block_open=open_call_ids is not None)
            self._check_content(i, role, message)
            self._check_weight(i, role, message)
            self._check_reasoning(i, role, message)
            if role == "tool":
                self._check_tool_answer(i, message, open_call_ids or set())
            elif role == "assistant":
                open_call_ids = call_ids
            else:
                open_call_ids = None
            # A misplaced system message says nothing about what may follow it; judge the next one on its own.
            previous_role = "?" if role == "system" and i > 0 else role
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") in ROLES and last["role"] != "assistant":
            self.add(
                len(messages) - 1,
                "must_end_with_assistant",
                f"the conversation must end with an assistant message, not a {last['role']} message",
            )

    def _check_order(self, i: int, role: str, previous: str | None, tool_block_open: bool) -> None:
        if role == "system":
            if i != 0:
                self.add(i, "role_order", "a system message is only allowed as the first message")
        elif previous in (None, "system"):
            if role != "user":
                self.add(
                    i,
                    "role_order",
                    f"the first message after the optional system message must be a user message, not {role}",
                )
        elif role == "user" and previous == "tool":
            self.add(
                i,
                "role_order",
                "a user message cannot follow a tool message; "
                "an assistant message must answer the tool results first",
            )
        elif role == "assistant" and previous not in ("user", "tool"):
            self.add(
                i, "role_order", f"an assistant message must follow a user or tool message, not {previous}"
            )
        elif role == "tool" and not (previous == "tool" or (previous == "assistant" and tool_block_open)):
            self.add(
                i,
                "role_order",
                "a tool message must follow an assistant message with tool_calls or another tool message",
            )

    def _check_content(self, i: int, role: str, message: dict[str, Any]) -> None:
        content = message.get("content")
        if content is None:
            if role == "assistant" and message.get("tool_calls") is not None:
                return
            if role == "assistant":
                self.add(i, "missing_content", "assistant message has neither content nor tool_calls")
            else:
                self.add(
                    i,
                    "missing_content",
                    f"{role} message has no content (only an assistant message with tool_calls may omit it)",
                )
        elif isinstance(content, list):
            if not content:
                self.add(i, "invalid_content", "content is an empty list of parts")
            for j, part in enumerate(content):
                self._check_part(i, j, part)
        elif not isinstance(content, str):
            self.add(
                i,
                "invalid_content",
                f"content must be a string or a list of content parts, got {json_type(content)}",
            )

    def _check_part(self, i: int, j: int, part: Any) -> None:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                self.add(i, "invalid_content_part", f"content[{j}] is a text part without a string 'text'")
        elif kind in IMAGE_PART_TYPES:
            if not self.rules.supports_images:
                self.add(
                    i,
                    "image_not_supported",
                    f"content[{j}] is an image, but the base model is text-only; "
                    "remove image parts or fine-tune a vision model",
                )
            elif not _image_url(part):
                self.add(
                    i,
                    "invalid_content_part",
                    f"content[{j}] is an image part without an image_url.url string",
                )
        else:
            allowed = "'text' or 'image_url'" if self.rules.supports_images else "'text'"
            self.add(
                i,
                "invalid_content_part",
                f"content[{j}] has unsupported type {shown_json(kind)}; expected {allowed}",
            )

    def _check_weight(self, i: int, role: str, message: dict[str, Any]) -> None:
        if "weight" not in message:
            return
        weight = message["weight"]
        if role != "assistant":
            self.add(
                i,
                "weight_not_allowed",
                f"weight is only allowed on assistant messages (the only ones trained on), not on {role}",
            )
        elif isinstance(weight, bool) or weight not in (0, 1):
            self.add(i, "invalid_weight", f"message weight must be 0 or 1, got {shown_json(weight)}")

    def _check_reasoning(self, i: int, role: str, message: dict[str, Any]) -> None:
        reasoning = message.get("reasoning_content")
        if reasoning is None:
            return
        if role != "assistant":
            self.add(
                i,
                "reasoning_not_allowed",
                f"reasoning_content is only allowed on assistant messages, not {role}",
            )
        elif not isinstance(reasoning, str):
            self.add(
                i,
                "invalid_reasoning_content",
                f"reasoning_content must be a string, got {json_type(reasoning)}",
            )

    def _check_tool_calls(self, i: int, role: str, tool_calls: Any) -> set[str] | None:
        """Validate `tool_calls`; return the ids of the well-formed calls (None when the message has none)."""
        if tool_calls is None:
            return None
        if role != "assistant":
            self.add(
                i, "tool_calls_not_allowed", f"tool_calls are only allowed on assistant messages, not {role}"
            )
            return None
        if not isinstance(tool_calls, list) or not tool_calls:
            self.add(i, "invalid_tool_call", "tool_calls must be a non-empty list")
            return None
        ids: set[str] = set()
        for j, call in enumerate(tool_calls):
            error = tool_call_error(call, self.tool_names)
            if error is not None:
                self.add(i, "invalid_tool_call", f"tool_calls[{j}]{error}")
            elif call["id"] in ids:
                self.add(i, "invalid_tool_call", f"tool_calls[{j}].id {call['id']!r} is used twice")
            else:
                ids.add(call["id"])
        return ids

    def _check_tool_answer(self, i: int, message: dict[str, Any], open_call_ids: set[str]) -> None:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            self.add(
                i, "missing_tool_call_id", "tool message needs a tool_call_id naming the call it answers"
            )
        elif open_call_ids and call_id not in open_call_ids:
            known = ", ".join(repr(c) for c in sorted(open_call_ids))
            self.add(
                i,
                "unknown_tool_call_id",
                f"tool_call_id {call_id!r} does not answer a call of the preceding assistant message ({known})",
            )


def _image_url(part: dict[str, Any]) -> bool:
    url = part.get("image_url", part.get("image"))
    return isinstance(url, str) or (isinstance(url, dict) and isinstance(url.get("url"), str))


def _is_non_negative_number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )
