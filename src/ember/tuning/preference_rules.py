"""The checks on one row of a preference (DPO) dataset, in the shape OpenAI and Fireworks both document:

    {"input": {"messages": [...], "tools": [...]?, "parallel_tool_calls": bool?},
     "preferred_output": [one assistant message], "non_preferred_output": [one assistant message]}

The conversation rules are the chat rows' (validation_rules.check_row), applied to the input followed by each
output, so a preference row takes exactly the messages, tools and tool calls a chat row takes. A problem names
its place in its message (`input.messages[2]: ...`, `preferred_output[0]: ...`); `Problem.message_index` stays
None, as it indexes a chat row's `messages`.

`pair_chat_rows` turns a valid row into the two chat rows the trainer and the token counter render: the input
with the preferred, and with the non-preferred reply, where only that reply is trained (earlier assistant
turns of the input are context).
"""

from __future__ import annotations

from typing import Any

from ember.tuning.dataset_report import Problem
from ember.tuning.json_wording import json_type
from ember.tuning.validation_rules import RowRules, check_row

PREFERENCE_FIELDS = ("input", "preferred_output", "non_preferred_output")
OUTPUT_FIELDS = ("preferred_output", "non_preferred_output")


def is_preference_row(row: Any) -> bool:
    """Whether a parsed row is meant as a preference row (it names a preference field and no `messages`)."""
    return isinstance(row, dict) and "messages" not in row and any(k in row for k in PREFERENCE_FIELDS)


def check_preference_row(row: Any, line: int, rules: RowRules) -> list[Problem]:
    """Every problem of one parsed preference row (an empty list when it is valid)."""
    if not isinstance(row, dict):
        return [Problem(line, None, "not_an_object", f"row must be a JSON object, got {json_type(row)}")]
    problems: list[Problem] = []
    if "messages" in row:
        problems.append(
            Problem(
                line,
                None,
                "mixed_row",
                "a preference row has 'input', 'preferred_output' and 'non_preferred_output', not 'messages'",
            )
        )
    messages = _input_messages(row, line, problems)
    outputs = {name: _output(row, name, line, problems) for name in OUTPUT_FIELDS}
    if messages is None or any(output is None for output in outputs.values()):
        return problems
    input_ends_right = _check_input_end(messages, line, problems)
    tools = row["input"].get("tools")
    for k, (name, output) in enumerate(outputs.items()):
        chat = {"messages": [*messages, output], **({} if tools is None else {"tools": tools})}
        for problem in check_row(chat, line, rules):
            at_input = problem.message_index is None or problem.message_index < len(messages)
            if k > 0 and at_input:
                continue  # the input's problems were reported with the preferred output
            if not at_input and problem.code == "role_order" and not input_ends_right:
                continue  # already said: the input must end with the message the outputs answer
            where = _place(problem.message_index, len(messages), name)
            problems.append(Problem(line, None, problem.code, f"{where}{problem.message}", problem.severity))
    if outputs["preferred_output"] == outputs["non_preferred_output"]:
        problems.append(
            Problem(
                line,
                None,
                "identical_outputs",
                "preferred_output and non_preferred_output are the same message; a pair needs two replies "
                "that differ",
            )
        )
    return problems


def pair_chat_rows(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(preferred, non-preferred) chat rows of a valid preference row: the input's messages (assistant turns
    with weight 0: context) followed by that output's message, trained."""
    context = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in row["input"]["messages"]]
    tools = row["input"].get("tools")
    extra = {"tools": tools} if tools else {}  # `"tools": []` (OpenAI's example rows) means no tools
    return tuple(  # type: ignore[return-value]
        {"messages": [*context, row[name][0]], **extra} for name in OUTPUT_FIELDS
    )


def _input_messages(row: dict[str, Any], line: int, problems: list[Problem]) -> list[Any] | None:
    value = row.get("input")
    if "input" not in row:
        problems.append(Problem(line, None, "missing_input", "row has no 'input' field"))
        return None
    if not isinstance(value, dict):
        problems.append(
            Problem(line, None, "invalid_input", f"'input' must be a JSON object, got {json_type(value)}")
        )
        return None
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append(
            Problem(line, None, "invalid_messages", "'input.messages' must be a non-empty list of messages")
        )
        return None
    parallel = value.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        problems.append(
            Problem(
                line,
                None,
                "invalid_input",
                f"'input.parallel_tool_calls' must be true or false, got {json_type(parallel)}",
            )
        )
    return messages


def _output(row: dict[str, Any], name: str, line: int, problems: list[Problem]) -> dict[str, Any] | None:
    """The one assistant message of an output field, or None (with a problem) when it is not that."""
    if name not in row:
        problems.append(Problem(line, None, f"missing_{name}", f"row has no '{name}' field"))
        return None
    value = row[name]
    if not isinstance(value, list) or len(value) != 1:
        got = f"a list of {len(value)} messages" if isinstance(value, list) else json_type(value)
        problems.append(
            Problem(
                line,
                None,
                f"invalid_{name}",
                f"'{name}' must be a list of exactly one assistant message, got {got}",
            )
        )
        return None
    message = value[0]
    if not isinstance(message, dict) or message.get("role") != "assistant":
        what = f"a {message.get('role')!r} message" if isinstance(message, dict) else json_type(message)
        problems.append(
            Problem(line, None, f"invalid_{name}", f"{name}[0] must be an assistant message, got {what}")
        )
        return None
    if "weight" in message:
        problems.append(
            Problem(
                line,
                None,
                "weight_not_allowed",
                f"{name}[0]: weight is not used in preference rows; both outputs are always trained",
            )
        )
        return None
    return message


def _check_input_end(messages: list[Any], line: int, problems: list[Problem]) -> bool:
    last = messages[-1]
    role = last.get("role") if isinstance(last, dict) else None
    if role in ("user", "tool") or not isinstance(role, str):
        return True  # a message without a valid role gets its own problem from the conversation rules
    problems.append(
        Problem(
            line,
            None,
            "input_must_end_with_user",
            f"input.messages[{len(messages) - 1}]: the input must end with the user (or tool) message the "
            f"outputs answer, not a {role} message",
        )
    )
    return False


def _place(index: int | None, n_input: int, output: str) -> str:
    if index is None:
        return ""
    return f"input.messages[{index}]: " if index < n_input else f"{output}[0]: "
