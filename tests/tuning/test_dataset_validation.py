"""File-level validation: BOM, blank lines, problem caps, and token counts from SmolLM2's real tokenizer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tuning_helpers import good_row, write_jsonl

from ember.tuning.validation import ValidationOptions, validate_dataset

Counter = Callable[[dict[str, Any]], tuple[int, int]]


def test_bom_on_line_one_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [json.dumps(good_row(answer=str(i))) for i in range(3)]
    path.write_bytes(f"\ufeff{rows[0]}\n\n{rows[1]}\n   \n{rows[2]}\r\n\n".encode())
    report = validate_dataset(path)
    assert report.ok and report.problems == [] and report.example_count == 3
    path.write_bytes(f"{rows[0]}\n\n{rows[1]}\n[]\n{rows[2]}\n".encode())
    assert [(p.line, p.code) for p in validate_dataset(path).problems] == [(4, "not_an_object")]


def test_a_bom_after_line_one_is_an_error_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [json.dumps(good_row()).encode() for _ in range(3)]
    path.write_bytes(rows[0] + b"\n" + rows[1] + b"\n\n\xef\xbb\xbf" + rows[2] + b"\n")
    report = validate_dataset(path)
    assert [(p.line, p.code) for p in report.problems] == [(4, "invalid_json")]


def test_pathological_json_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [good_row(), "[" * 100_000, good_row(), good_row()])
    report = validate_dataset(path)
    assert [(p.line, p.code, p.message) for p in report.problems] == [
        (2, "invalid_json", "line is not valid JSON: nested too deeply")
    ]


def test_invalid_utf8_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    good = json.dumps(good_row()).encode()
    path.write_bytes(b"\n".join([good, good, b'{"messages": "\xff"}', good]) + b"\n")
    report = validate_dataset(path)
    assert [(p.line, p.code) for p in report.problems] == [(3, "invalid_utf8")]
    assert report.example_count == 4 and not report.ok


def test_stored_problems_are_capped_but_all_are_counted(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ["not json"] * 250)
    report = validate_dataset(path, ValidationOptions(max_problems=10))
    assert len(report.problems) == 10 and report.error_count == 250 and report.truncated
    assert [p.line for p in report.problems] == list(range(1, 11))
    summary = report.summary()
    assert "250 error(s) in 250 example(s)" in summary and "line 1:" in summary


def test_estimated_tokens_match_the_chat_template(
    tmp_path: Path, smollm_tokenizer: Any, chatml_counter: Counter
) -> None:
    rows = [good_row("Name a color.", "Blue."), good_row("Say hi.", "Hi!"), good_row("Count to 3.", "1 2 3")]
    report = validate_dataset(write_jsonl(tmp_path / "data.jsonl", rows), count_tokens=chatml_counter)
    expected_total = sum(
        len(smollm_tokenizer.apply_chat_template(r["messages"], tokenize=True)) for r in rows
    )
    # What the loss sees: each answer and its end-of-turn token.
    expected_trainable = sum(
        len(smollm_tokenizer(r["messages"][1]["content"] + "<|im_end|>", add_special_tokens=False).input_ids)
        for r in rows
    )
    assert report.ok
    assert report.estimated_token_count == expected_total
    assert report.trainable_token_count == expected_trainable
    assert report.to_dict()["estimated_token_count"] == expected_total


def test_rows_over_max_context_are_counted_and_reported(tmp_path: Path, chatml_counter: Counter) -> None:
    long_answer = " ".join(["word"] * 200)
    rows = [good_row(), good_row(answer=long_answer), good_row(), good_row(answer=long_answer)]
    limit = 100
    report = validate_dataset(
        write_jsonl(tmp_path / "data.jsonl", rows),
        ValidationOptions(max_context_length=limit),
        chatml_counter,
    )
    assert report.ok  # a warning: the data can still be trained on
    assert report.rows_over_max_context == 2
    too_long = [p for p in report.problems if p.code == "too_long"]
    assert [(p.line, p.message_index, p.severity) for p in too_long] == [
        (2, None, "warning"),
        (4, None, "warning"),
    ]
    assert chatml_counter(rows[1])[0] > limit
    assert (
        f"{chatml_counter(rows[1])[0]} tokens, more than the max context length {limit}"
        in too_long[0].message
    )


def test_rows_without_trainable_tokens_are_counted_and_reported(
    tmp_path: Path, chatml_counter: Counter
) -> None:
    muted = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey", "weight": 0}]
    }
    rows = [
        {**good_row(), "weight": 1.0},
        {**muted, "weight": 1.0},
        {**good_row(), "weight": 0},
        {**good_row(), "weight": 0.5},
    ]
    report = validate_dataset(write_jsonl(tmp_path / "data.jsonl", rows), count_tokens=chatml_counter)
    assert report.ok and report.rows_without_trainable_tokens == 2
    assert [(p.line, p.code, p.severity, p.message) for p in report.problems] == [
        (
            2,
            "no_trainable_tokens",
            "warning",
            "row has no trainable tokens: every assistant message has weight 0",
        ),
        (3, "no_trainable_tokens", "warning", "row has no trainable tokens: its sample weight is 0"),
    ]
    # Only the rows that train count as trainable tokens.
    assert report.trainable_token_count == chatml_counter(rows[0])[1] + chatml_counter(rows[3])[1]


def test_a_dataset_where_nothing_trains_is_rejected(tmp_path: Path) -> None:
    muted = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey", "weight": 0}]
    }
    report = validate_dataset(write_jsonl(tmp_path / "data.jsonl", [muted] * 3))
    assert not report.ok
    assert [(p.line, p.code) for p in report.problems][-1] == (None, "nothing_to_train")
    assert report.rows_without_trainable_tokens == 3


def test_empty_file_has_too_few_examples(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n\n")
    report = validate_dataset(path)
    assert report.example_count == 0 and [p.code for p in report.problems] == ["too_few_examples"]


def test_without_a_counter_token_fields_are_absent(tmp_path: Path) -> None:
    report = validate_dataset(write_jsonl(tmp_path / "data.jsonl", [good_row()] * 3))
    assert report.ok and report.estimated_token_count is None and report.trainable_token_count is None


def test_options_are_checked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [good_row()] * 3)
    with pytest.raises(ValueError, match="no count_tokens"):
        validate_dataset(path, ValidationOptions(max_context_length=2048))
    with pytest.raises(ValueError, match="max_context_length must be positive"):
        ValidationOptions(max_context_length=0)
    with pytest.raises(ValueError, match="expected \\(total, trainable\\)"):
        validate_dataset(path, count_tokens=lambda row: (3, 5))


def test_a_row_the_template_cannot_render_is_a_problem_at_its_line(tmp_path: Path) -> None:
    """The real masker refuses tool calls for SmolLM2's template (it would drop them); that is a 400, not a crash."""
    from ember.engine.testing import tiny_loaded_model
    from ember.tuning.masking import ConversationMasker

    masker = ConversationMasker.for_model(tiny_loaded_model())
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    tool_row = {
        "messages": [
            {"role": "user", "content": "What time is it?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
            {"role": "assistant", "content": "It is noon."},
        ]
    }
    path = write_jsonl(tmp_path / "data.jsonl", [good_row(), good_row(), tool_row, good_row()])
    report = validate_dataset(path, count_tokens=masker.count_tokens)
    assert not report.ok
    problems = [p for p in report.problems if p.code == "unrenderable_row"]
    assert [p.line for p in problems] == [3]
    assert "chat template" in problems[0].message
