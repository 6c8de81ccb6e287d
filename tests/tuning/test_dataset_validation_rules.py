"""Every validation rule, on a real JSONL file: the bad row is line 4, after three good rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tuning_helpers import good_row, write_jsonl

from ember.tuning.validation import ValidationOptions, validate_dataset

U = {"role": "user", "content": "What is the weather in Paris?"}
A = {"role": "assistant", "content": "Sunny."}
SYSTEM = {"role": "system", "content": "You are terse."}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
A_CALLS = {"role": "assistant", "content": None, "tool_calls": [CALL]}
TOOL = {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def with_call(**changes: Any) -> dict[str, Any]:
    """An assistant message whose single tool call has `changes` merged into it (None values remove a key)."""
    call = json.loads(json.dumps(CALL))
    for key, value in changes.items():
        target, name = (
            (call["function"], key[len("function.") :]) if key.startswith("function.") else (call, key)
        )
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def errors_for(tmp_path: Path, bad_row: Any, supports_images: bool = False) -> list[tuple[Any, ...]]:
    path = write_jsonl(tmp_path / "data.jsonl", [good_row(), good_row(), good_row(), bad_row])
    report = validate_dataset(path, ValidationOptions(supports_images=supports_images))
    return [(p.line, p.message_index, p.code) for p in report.problems if p.severity == "error"]


def problem_text(tmp_path: Path, bad_row: Any, supports_images: bool = False) -> str:
    path = write_jsonl(tmp_path / "data.jsonl", [good_row(), good_row(), good_row(), bad_row])
    return " | ".join(p.message for p in validate_dataset(path, ValidationOptions(supports_images)).problems)


BAD_ROWS: dict[str, tuple[Any, list[tuple[Any, ...]]]] = {
    "not json": ('{"messages": [', [(4, None, "invalid_json")]),
    "NaN is not JSON": ('{"messages": NaN}', [(4, None, "invalid_json")]),
    "not an object": ("[1, 2]", [(4, None, "not_an_object")]),
    "no messages": ({"prompt": "hi", "completion": "there"}, [(4, None, "missing_messages")]),
    "empty messages": ({"messages": []}, [(4, None, "invalid_messages")]),
    "messages not a list": ({"messages": "hi"}, [(4, None, "invalid_messages")]),
    "message not an object": ({"messages": [U, "Sunny."]}, [(4, 1, "invalid_message")]),
    "unknown role": ({"messages": [U, {"role": "bot", "content": "x"}]}, [(4, 1, "unknown_role")]),
    "missing role": ({"messages": [U, {"content": "x"}, A]}, [(4, 1, "unknown_role")]),
    "system not first": ({"messages": [U, A, SYSTEM, U, A]}, [(4, 2, "role_order")]),
    "assistant first after system": ({"messages": [SYSTEM, A]}, [(4, 1, "role_order")]),
    "assistant first": ({"messages": [A, U, A]}, [(4, 0, "role_order")]),
    "assistant after assistant": ({"messages": [U, A, A]}, [(4, 2, "role_order")]),
    "tool after user": ({"messages": [U, TOOL, A]}, [(4, 1, "role_order")]),
    "tool after assistant without tool_calls": ({"messages": [U, A, TOOL, A]}, [(4, 2, "role_order")]),
    "user after tool": ({"messages": [U, A_CALLS, TOOL, U, A]}, [(4, 3, "role_order")]),
    "ends with user": ({"messages": [U, A, U]}, [(4, 2, "must_end_with_assistant")]),
    "ends with tool": ({"messages": [U, A_CALLS, TOOL]}, [(4, 2, "must_end_with_assistant")]),
    "user without content": ({"messages": [{"role": "user"}, A]}, [(4, 0, "missing_content")]),
    "user with null content": (
        {"messages": [{"role": "user", "content": None}, A]},
        [(4, 0, "missing_content")],
    ),
    "system without content": ({"messages": [{"role": "system"}, U, A]}, [(4, 0, "missing_content")]),
    "tool without content": (
        {"messages": [U, A_CALLS, {"role": "tool", "tool_call_id": "call_1"}, A]},
        [(4, 2, "missing_content")],
    ),
    "assistant without content or tool_calls": (
        {"messages": [U, {"role": "assistant", "content": None}]},
        [(4, 1, "missing_content")],
    ),
    "content a number": ({"messages": [U, {"role": "assistant", "content": 5}]}, [(4, 1, "invalid_content")]),
    "content an empty list": (
        {"messages": [{"role": "user", "content": []}, A]},
        [(4, 0, "invalid_content")],
    ),
    "text part without text": (
        {"messages": [{"role": "user", "content": [{"type": "text"}]}, A]},
        [(4, 0, "invalid_content_part")],
    ),
    "audio part": (
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, A]},
        [(4, 0, "invalid_content_part")],
    ),
    "image part on a text-only model": (
        {
            "messages": [
                U,
                A,
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}],
                },
                A,
            ]
        },
        [(4, 2, "image_not_supported")],
    ),
    "tool_calls not a list": (
        {"messages": [U, {"role": "assistant", "tool_calls": CALL}]},
        [(4, 1, "invalid_tool_call")],
    ),
    "tool_calls empty": (
        {"messages": [U, {"role": "assistant", "tool_calls": []}]},
        [(4, 1, "invalid_tool_call")],
    ),
    "tool call without id": ({"messages": [U, with_call(id=None), TOOL, A]}, [(4, 1, "invalid_tool_call")]),
    "tool call of another type": (
        {"messages": [U, with_call(type="retrieval"), TOOL, A]},
        [(4, 1, "invalid_tool_call")],
    ),
    "tool call without function name": (
        {"messages": [U, with_call(**{"function.name": ""}), TOOL, A]},
        [(4, 1, "invalid_tool_call")],
    ),
    "tool call arguments as an object": (
        {"messages": [U, with_call(**{"function.arguments": {"city": "Paris"}}), TOOL, A]},
        [(4, 1, "invalid_tool_call")],
    ),
    "tool call arguments not JSON": (
        {"messages": [U, with_call(**{"function.arguments": "{city: Paris"}), TOOL, A]},
        [(4, 1, "invalid_tool_call")],
    ),
    "duplicate tool call ids": (
        {"messages": [U, {"role": "assistant", "tool_calls": [CALL, CALL]}, TOOL, A]},
        [(4, 1, "invalid_tool_call")],
    ),
    "tool_calls on a user message": (
        {"messages": [{"role": "user", "content": "hi", "tool_calls": [CALL]}, A]},
        [(4, 0, "tool_calls_not_allowed")],
    ),
    "tool message answering an unknown call": (
        {"messages": [U, A_CALLS, {**TOOL, "tool_call_id": "call_9"}, A]},
        [(4, 2, "unknown_tool_call_id")],
    ),
    "tool message without tool_call_id": (
        {"messages": [U, A_CALLS, {"role": "tool", "content": "{}"}, A]},
        [(4, 2, "missing_tool_call_id")],
    ),
    "message weight 0.5": ({"messages": [U, {**A, "weight": 0.5}]}, [(4, 1, "invalid_weight")]),
    "message weight true": ({"messages": [U, {**A, "weight": True}]}, [(4, 1, "invalid_weight")]),
    "message weight 2": ({"messages": [U, A, U, {**A, "weight": 2}]}, [(4, 3, "invalid_weight")]),
    "weight on a user message": ({"messages": [{**U, "weight": 1}, A]}, [(4, 0, "weight_not_allowed")]),
    "reasoning_content on a user message": (
        {"messages": [{**U, "reasoning_content": "hmm"}, A]},
        [(4, 0, "reasoning_not_allowed")],
    ),
    "reasoning_content not a string": (
        {"messages": [U, {**A, "reasoning_content": ["step 1"]}]},
        [(4, 1, "invalid_reasoning_content")],
    ),
    "tools not a list": ({"messages": [U, A], "tools": WEATHER_TOOL}, [(4, None, "invalid_tools")]),
    "tool definition without name": (
        {"messages": [U, A], "tools": [{"type": "function", "function": {"parameters": {"type": "object"}}}]},
        [(4, None, "invalid_tool_definition")],
    ),
    "tool parameters not an object schema": (
        {
            "messages": [U, A],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": "city"}}],
        },
        [(4, None, "invalid_tool_definition")],
    ),
    "tool parameters of type string": (
        {
            "messages": [U, A],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
        },
        [(4, None, "invalid_tool_definition")],
    ),
    "call of a tool the row does not define": (
        {"messages": [U, with_call(**{"function.name": "get_time"}), TOOL, A], "tools": [WEATHER_TOOL]},
        [(4, 1, "invalid_tool_call")],
    ),
}


@pytest.mark.parametrize("bad_row, expected", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_each_rule_reports_its_line_and_message_index(tmp_path: Path, bad_row: Any, expected: list) -> None:
    assert errors_for(tmp_path, bad_row) == expected


GOOD_ROWS: dict[str, dict[str, Any]] = {
    "system, then user and assistant": {"messages": [SYSTEM, U, A]},
    "multi-turn with consecutive user messages": {"messages": [U, A, U, U, A]},
    "a tool round trip with the tools declared": {"messages": [U, A_CALLS, TOOL, A], "tools": [WEATHER_TOOL]},
    "assistant content absent when it calls a tool": {
        "messages": [U, {"role": "assistant", "tool_calls": [CALL]}, TOOL, A]
    },
    "two calls answered by two tool messages": {
        "messages": [
            U,
            {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
            TOOL,
            {**TOOL, "tool_call_id": "call_2"},
            A,
        ]
    },
    "text content parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, A]},
    "message weights 0 and 1 and reasoning": {
        "messages": [U, {**A, "weight": 0}, U, {**A, "weight": 1, "reasoning_content": "The sky is clear."}]
    },
    "a tool without parameters": {
        "messages": [U, A],
        "tools": [{"type": "function", "function": {"name": "now"}}],
    },
}


@pytest.mark.parametrize("row", GOOD_ROWS.values(), ids=GOOD_ROWS.keys())
def test_valid_rows_have_no_errors(tmp_path: Path, row: dict[str, Any]) -> None:
    assert errors_for(tmp_path, row) == []


def test_image_parts_pass_for_a_vision_model(tmp_path: Path) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}, A]}
    assert errors_for(tmp_path, row, supports_images=True) == []
    broken = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, A]}
    assert errors_for(tmp_path, broken, supports_images=True) == [(4, 0, "invalid_content_part")]


def test_messages_name_the_problem(tmp_path: Path) -> None:
    image_row = {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, A]
    }
    assert "the base model is text-only" in problem_text(tmp_path, image_row)
    assert "tool_calls[0].function.arguments is not valid JSON" in problem_text(
        tmp_path, {"messages": [U, with_call(**{"function.arguments": "{"}), TOOL, A]}
    )
    assert "message weight must be 0 or 1, got 0.5" in problem_text(
        tmp_path, {"messages": [U, {**A, "weight": 0.5}]}
    )
    assert 'unknown role "bot"' in problem_text(tmp_path, {"messages": [U, {"role": "bot", "content": "x"}]})


def test_sample_weight_must_be_a_non_negative_number(tmp_path: Path) -> None:
    rows = [{**good_row(), "weight": w} for w in (1.0, 0.5, 2)]
    for bad in (-1, "1", None, True):
        path = write_jsonl(tmp_path / "data.jsonl", [*rows, {**good_row(), "weight": bad}])
        report = validate_dataset(path)
        assert [(p.line, p.message_index, p.code) for p in report.problems] == [
            (4, None, "invalid_sample_weight")
        ], bad


def test_sample_weight_on_all_rows_or_none(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [good_row(), good_row(), {**good_row(), "weight": 2.0}, good_row(), {**good_row(), "weight": 1}],
    )
    report = validate_dataset(path)
    assert [(p.line, p.code) for p in report.problems] == [
        (3, "inconsistent_sample_weight"),
        (5, "inconsistent_sample_weight"),
    ]
    assert "line 1 has no" in report.problems[0].message
    assert not report.ok


def test_fewer_than_three_examples(tmp_path: Path) -> None:
    report = validate_dataset(write_jsonl(tmp_path / "data.jsonl", [good_row(), good_row()]))
    assert [(p.line, p.message_index, p.code) for p in report.problems] == [(None, None, "too_few_examples")]
    assert report.problems[0].message == "dataset has 2 example(s); at least 3 are needed"
    assert not report.ok and report.example_count == 2
