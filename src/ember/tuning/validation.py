"""Validate a JSONL fine-tuning dataset at upload time, streamed line by line, into a `ValidationReport`.

A dataset holds chat rows (`messages`: SFT) or preference rows (`input`, `preferred_output`,
`non_preferred_output`: DPO), never both; its first JSON object decides which, and the report says so
(`dataset_format`), so a job can tell whether the data suits its method. Row-level rules live in
validation_rules.py and preference_rules.py; this module adds what spans rows: blank lines and a BOM, the
per-sample `weight` present on all rows or none, the minimum example count, and token counts. Token counting
belongs to the base model's chat template, so the caller injects it as `count_tokens(row) -> (total,
trainable)` over a chat row; it is called only on rows that passed every rule (a preference row: once per
output, each rendered after the input).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.tuning.dataset_report import Problem, ProblemCollector, ValidationReport
from ember.tuning.preference_rules import check_preference_row, is_preference_row, pair_chat_rows
from ember.tuning.validation_rules import RowRules, check_row, has_trainable_message

TokenCounter = Callable[[dict[str, Any]], tuple[int, int]]
"""(row) -> (tokens of the rendered conversation, tokens trained on); the row has passed validation."""

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ValidationOptions:
    """What the dataset is checked against; `max_context_length` needs a token counter."""

    supports_images: bool = False  # False for a text-only base model: image content parts are rejected
    max_context_length: int | None = None  # rows with more tokens are counted and reported as warnings
    min_examples: int = 3
    max_problems: int = 100  # problems kept in the report; all of them are counted

    def __post_init__(self) -> None:
        if self.max_context_length is not None and self.max_context_length < 1:
            raise ValueError(f"max_context_length must be positive, got {self.max_context_length}")
        if self.min_examples < 1:
            raise ValueError(f"min_examples must be at least 1, got {self.min_examples}")
        if self.max_problems < 1:
            raise ValueError(f"max_problems must be at least 1, got {self.max_problems}")


def validate_dataset(
    path: str | Path, options: ValidationOptions | None = None, count_tokens: TokenCounter | None = None
) -> ValidationReport:
    """Check every row of the JSONL file at `path`; the report's `ok` is False when any error was found."""
    options = options or ValidationOptions()
    if options.max_context_length is not None and count_tokens is None:
        raise ValueError("max_context_length is set but no count_tokens was given to measure rows with")
    validator = _DatasetValidator(options, count_tokens)
    with open(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            if line_number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            validator.add_line(line_number, raw)
    return validator.report()


class _DatasetValidator:
    """Accumulates problems and counts over the lines of one file."""

    def __init__(self, options: ValidationOptions, count_tokens: TokenCounter | None) -> None:
        self.options = options
        self.rules = RowRules(supports_images=options.supports_images)
        self.count_tokens = count_tokens
        self.problems = ProblemCollector(options.max_problems)
        self.example_count = 0
        self.valid_rows = 0
        self.rows_without_trainable_tokens = 0
        self.rows_over_max_context = 0
        self.total_tokens = 0
        self.trainable_tokens = 0
        # (line, has a top-level weight) of the first row: every later row must agree with it
        self.first_row_weight: tuple[int, bool] | None = None
        # (line, "chat" | "preference") of the first JSON object: every later row must be of that format
        self.first_row_format: tuple[int, str] | None = None

    def add_line(self, line: int, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            self.example_count += 1
            self.problems.add(
                Problem(line, None, "invalid_utf8", f"line is not UTF-8 (byte {error.start + 1})")
            )
            return
        if not text.strip():
            return  # blank lines separate nothing and are allowed
        self.example_count += 1
        try:
            row = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as error:
            if isinstance(error, json.JSONDecodeError):
                detail = f"{error.msg} at column {error.colno}"
            else:
                detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)
            self.problems.add(Problem(line, None, "invalid_json", f"line is not valid JSON: {detail}"))
            return
        dataset_format = self._format_of(line, row)
        if dataset_format is None:
            return  # a row of the other format, reported
        if dataset_format == "preference":
            row_problems = check_preference_row(row, line, self.rules)
        else:
            row_problems = check_row(row, line, self.rules)
            if isinstance(row, dict):
                row_problems.extend(self._check_weight_presence(line, row))
        self.problems.extend(row_problems)
        if not any(p.severity == "error" for p in row_problems):
            if dataset_format == "preference":
                self._measure_pair(line, row)
            else:
                self._measure(line, row)

    def _format_of(self, line: int, row: Any) -> str | None:
        """The dataset's format ("chat" | "preference"), set by its first JSON object; None, with a problem, for
        a row of the other format."""
        if not isinstance(row, dict):
            return "chat" if self.first_row_format is None else self.first_row_format[1]
        row_format = "preference" if is_preference_row(row) else "chat"
        if self.first_row_format is None:
            self.first_row_format = (line, row_format)
        first_line, dataset_format = self.first_row_format
        if row_format == dataset_format:
            return row_format
        self.problems.add(
            Problem(
                line,
                None,
                "mixed_formats",
                f"this is a {row_format} row but line {first_line} is a {dataset_format} row; a dataset holds "
                "chat rows (messages) or preference rows (input, preferred_output, non_preferred_output), "
                "not both",
            )
        )
        return None

    def _check_weight_presence(self, line: int, row: dict[str, Any]) -> list[Problem]:
        has_weight = "weight" in row
        if self.first_row_weight is None:
            self.first_row_weight = (line, has_weight)
            return []
        first_line, first_has_weight = self.first_row_weight
        if has_weight == first_has_weight:
            return []
        first = "has" if first_has_weight else "has no"
        this = "has" if has_weight else "has no"
        message = (
            f"this row {this} top-level weight but line {first_line} {first}; "
            "give every row a per-sample weight or none"
        )
        return [Problem(line, None, "inconsistent_sample_weight", message)]

    def _measure(self, line: int, row: dict[str, Any]) -> None:
        """Token counts and the warnings that need them, for a row that passed every rule."""
        self.valid_rows += 1
        untrained_reason = None
        if not has_trainable_message(row["messages"]):
            untrained_reason = "every assistant message has weight 0"
        elif row.get("weight", 1) == 0:
            untrained_reason = "its sample weight is 0"
        if self.count_tokens is not None:
            try:
                total, trained = self.count_tokens(row)
            except ValueError as exc:
                # The template cannot render this row: reject the row, not crash the upload.
                self.valid_rows -= 1
                message = f"the base model's chat template cannot render this row: {exc}"
                self.problems.add(Problem(line, None, "unrenderable_row", message))
                return
            if not (isinstance(total, int) and isinstance(trained, int) and 0 <= trained <= total):
                raise ValueError(
                    f"count_tokens returned {(total, trained)!r} for line {line}; "
                    "expected (total, trainable) with 0 <= trainable <= total"
                )
            self.total_tokens += total
            if untrained_reason is None and trained == 0:
                untrained_reason = "the chat template renders no trained assistant tokens"
            self.trainable_tokens += trained if untrained_reason is None else 0
            limit = self.options.max_context_length
            if limit is not None and total > limit:
                self.rows_over_max_context += 1
                self.problems.add(
                    Problem(
                        line,
                        None,
                        "too_long",
                        f"row has {total} tokens, more than the max context length {limit}",
                        "warning",
                    )
                )
        if untrained_reason is not None:
            self.rows_without_trainable_tokens += 1
            message = f"row has no trainable tokens: {untrained_reason}"
            self.problems.add(Problem(line, None, "no_trainable_tokens", message, "warning"))

    def _measure_pair(self, line: int, row: dict[str, Any]) -> None:
        """Token counts of a preference row that passed every rule: its two outputs, each after the input."""
        self.valid_rows += 1
        if self.count_tokens is None:
            return
        counts = []
        for chat in pair_chat_rows(row):
            try:
                counts.append(self.count_tokens(chat))
            except ValueError as exc:
                self.valid_rows -= 1
                message = f"the base model's chat template cannot render this row: {exc}"
                self.problems.add(Problem(line, None, "unrenderable_row", message))
                return
        self.total_tokens += sum(total for total, _ in counts)
        self.trainable_tokens += sum(trained for _, trained in counts)
        limit = self.options.max_context_length
        longest = max(total for total, _ in counts)
        if limit is not None and longest > limit:
            self.rows_over_max_context += 1
            message = (
                f"the input with one of its outputs has {longest} tokens, more than the max context length "
                f"{limit}; the pair is left out of training"
            )
            self.problems.add(Problem(line, None, "too_long", message, "warning"))
        if any(trained == 0 for _, trained in counts):
            self.rows_without_trainable_tokens += 1
            message = "row has no trainable tokens: the chat template renders an output as no tokens"
            self.problems.add(Problem(line, None, "no_trainable_tokens", message, "warning"))

    def report(self) -> ValidationReport:
        if self.example_count < self.options.min_examples:
            self.problems.add(
                Problem(
                    None,
                    None,
                    "too_few_examples",
                    f"dataset has {self.example_count} example(s); "
                    f"at least {self.options.min_examples} are needed",
                )
            )
        elif self.valid_rows > 0 and self.rows_without_trainable_tokens == self.valid_rows:
            self.problems.add(Problem(None, None, "nothing_to_train", "no row has trainable tokens"))
        counted = self.count_tokens is not None
        return ValidationReport(
            ok=self.problems.error_count == 0,
            example_count=self.example_count,
            problems=list(self.problems.problems),
            error_count=self.problems.error_count,
            warning_count=self.problems.warning_count,
            rows_without_trainable_tokens=self.rows_without_trainable_tokens,
            rows_over_max_context=self.rows_over_max_context,
            estimated_token_count=self.total_tokens if counted else None,
            trainable_token_count=self.trainable_tokens if counted else None,
            max_context_length=self.options.max_context_length,
            dataset_format=self.first_row_format[1] if self.first_row_format is not None else "chat",
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
