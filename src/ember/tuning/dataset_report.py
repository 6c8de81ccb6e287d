"""What validating a fine-tuning dataset found: each problem with its line and message index, plus counts.

The report is what an upload route returns when it rejects a file (and what a dataset row remembers when it
accepts one), so it renders to plain JSON with `to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the dataset.

    `line` is the 1-based line of the JSONL file (None for a problem of the whole file, such as too few
    examples); `message_index` is the 0-based index into that row's `messages` (None for a row-level problem).
    Errors reject the upload; warnings are reported but the data can still be trained on.
    """

    line: int | None
    message_index: int | None
    code: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = "file" if self.line is None else f"line {self.line}"
        if self.message_index is not None:
            where += f", messages[{self.message_index}]"
        return f"{where}: {self.message} ({self.code})"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one JSONL dataset.

    `problems` holds at most the first `max_problems` problems found (in file order); `error_count` and
    `warning_count` count all of them. Token fields are None when no token counter was given.
    """

    ok: bool
    example_count: int
    problems: list[Problem]
    error_count: int
    warning_count: int
    rows_without_trainable_tokens: int
    rows_over_max_context: int
    estimated_token_count: int | None
    trainable_token_count: int | None
    max_context_length: int | None
    dataset_format: str = "chat"  # "chat" (SFT rows) or "preference" (DPO rows), from the first row

    @property
    def truncated(self) -> bool:
        """Whether problems were found beyond the stored ones."""
        return len(self.problems) < self.error_count + self.warning_count

    def summary(self) -> str:
        """One line for an error message: the counts and the first error."""
        if self.ok:
            return f"{self.example_count} examples are valid ({self.warning_count} warnings)"
        first_error = next((p for p in self.problems if p.severity == "error"), None)
        text = f"dataset has {self.error_count} error(s) in {self.example_count} example(s)"
        return text if first_error is None else f"{text}; first: {first_error}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "example_count": self.example_count,
            "error_count": self.error_count,
            "warning_count": self.warning_count,
            "problems": [
                {
                    "line": p.line,
                    "message_index": p.message_index,
                    "code": p.code,
                    "message": p.message,
                    "severity": p.severity,
                }
                for p in self.problems
            ],
            "problems_truncated": self.truncated,
            "rows_without_trainable_tokens": self.rows_without_trainable_tokens,
            "rows_over_max_context": self.rows_over_max_context,
            "estimated_token_count": self.estimated_token_count,
            "trainable_token_count": self.trainable_token_count,
            "max_context_length": self.max_context_length,
            "dataset_format": self.dataset_format,
        }


@dataclass
class ProblemCollector:
    """Keeps the first `max_problems` problems and counts every one, so a huge bad file stays cheap to report."""

    max_problems: int
    problems: list[Problem] = field(default_factory=list)
    error_count: int = 0
    warning_count: int = 0

    def __post_init__(self) -> None:
        if self.max_problems < 1:
            raise ValueError(f"max_problems must be at least 1, got {self.max_problems}")

    def add(self, problem: Problem) -> None:
        if problem.severity == "error":
            self.error_count += 1
        else:
            self.warning_count += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)

    def extend(self, problems: list[Problem]) -> None:
        for problem in problems:
            self.add(problem)
