"""Preference (DPO) datasets at upload: the first row decides the format, every bad row is reported with its
line and the place in the row, chat and preference rows never mix, and tokens are counted per output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuning_helpers import good_row, write_jsonl

from ember.tuning.preference_rules import pair_chat_rows
from ember.tuning.validation import ValidationOptions, validate_dataset


def pair(question: str = "What is 2 + 2?", good: str = "4.", bad: str = "5.") -> dict[str, Any]:
    return {
        "input": {
            "messages": [{"role": "user", "content": question}],
            "tools": [],
            "parallel_tool_calls": True,
        },
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


def problems(tmp_path: Path, rows: list[Any]) -> list[tuple[int | None, str, str]]:
    report = validate_dataset(write_jsonl(tmp_path / "prefs.jsonl", rows))
    return [(p.line, p.code, p.message) for p in report.problems if p.severity == "error"]


def test_a_valid_preference_dataset_is_reported_as_one(
    tmp_path: Path, chatml_counter: Callable[[dict[str, Any]], tuple[int, int]]
) -> None:
    rows = [pair(f"Question {i}?") for i in range(3)]
    rows[1]["input"]["messages"] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "And now?"},
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    report = validate_dataset(path, ValidationOptions(max_context_length=4096), chatml_counter)
    assert report.ok, report.problems
    assert report.dataset_format == "preference" and report.to_dict()["dataset_format"] == "preference"
    assert report.example_count == 3
    expected = [chatml_counter(chat) for row in rows for chat in pair_chat_rows(row)]
    assert report.estimated_token_count == sum(total for total, _ in expected)
    assert report.trainable_token_count == sum(trained for _, trained in expected)
    # The input's assistant turn is context: only each output is trained.
    preferred, _ = pair_chat_rows(rows[1])
    assert [m.get("weight", 1) for m in preferred["messages"]] == [1, 1, 0, 1, 1]


def test_bad_rows_are_named_by_line_and_place(tmp_path: Path) -> None:
    no_input = pair()
    del no_input["input"]
    two_outputs = pair()
    two_outputs["preferred_output"].append({"role": "assistant", "content": "again"})
    user_output = pair()
    user_output["non_preferred_output"] = [{"role": "user", "content": "?"}]
    ends_with_assistant = pair()
    ends_with_assistant["input"]["messages"].append({"role": "assistant", "content": "hmm"})
    bad_content = pair()
    bad_content["non_preferred_output"][0]["content"] = 42
    bad_input_message = pair()
    bad_input_message["input"]["messages"].insert(0, {"role": "wizard", "content": "x"})
    rows: list[Any] = [
        pair(),
        no_input,
        two_outputs,
        user_output,
        ends_with_assistant,
        bad_content,
        pair(good="same", bad="same"),
        bad_input_message,
        {"input": "text", "preferred_output": [], "non_preferred_output": []},
        "not json",
        {**pair(), "preferred_output": [{"role": "assistant", "content": "x", "weight": 0}]},
    ]
    found = problems(tmp_path, rows)
    lines = {line for line, _, _ in found}
    assert 1 not in lines and lines == set(range(2, 12))
    by_line: dict[int | None, tuple[str, str]] = {}
    for line, code, message in found:
        by_line.setdefault(line, (code, message))  # the first problem of each line
    assert by_line[2][0] == "missing_input"
    assert by_line[3] == (
        "invalid_preferred_output",
        "'preferred_output' must be a list of exactly one assistant message, got a list of 2 messages",
    )
    assert "non_preferred_output[0] must be an assistant message" in by_line[4][1]
    assert by_line[5][0] == "input_must_end_with_user" and "input.messages[1]" in by_line[5][1]
    assert by_line[6][1].startswith("non_preferred_output[0]: content must be a string")
    assert by_line[7][0] == "identical_outputs"
    assert by_line[8][1].startswith("input.messages[0]: unknown role")
    assert [code for line, code, _ in found if line == 8].count("unknown_role") == 1  # not once per output
    assert by_line[9][0] == "invalid_input"
    assert by_line[10][0] == "invalid_json"
    assert by_line[11][0] == "weight_not_allowed"


def test_chat_and_preference_rows_do_not_mix(tmp_path: Path) -> None:
    found = problems(tmp_path, [pair(), pair(), good_row(), pair()])
    assert [(line, code) for line, code, _ in found] == [(3, "mixed_formats")]
    assert "line 1 is a preference row" in found[0][2]
    chat_first = validate_dataset(write_jsonl(tmp_path / "chat.jsonl", [good_row(), pair(), good_row()]))
    assert chat_first.dataset_format == "chat"
    assert [(p.line, p.code) for p in chat_first.problems] == [(2, "mixed_formats")]


def test_too_few_pairs(tmp_path: Path) -> None:
    assert [code for _, code, _ in problems(tmp_path, [pair(), pair("Other?")])] == ["too_few_examples"]
