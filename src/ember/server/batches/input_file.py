"""A batch input file: JSONL of requests, one a line, checked at upload as a batch file (not as SFT data).

OpenAI's lines are `{"custom_id", "method": "POST", "url", "body"}`; Fireworks' dataset rows are
`{"custom_id", "body"}` (chat completions). Only the envelope is checked here: `custom_id` a unique non-empty
string, `method` POST, `url` one of BATCH_URLS, `body` an object. The body itself is checked when its line
runs, by the live route's own code, and a bad one becomes a line of the batch's error file, as OpenAI does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.tuning.dataset_report import Problem, ProblemCollector, ValidationReport

BATCH_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
FIREWORKS_URL = "/v1/chat/completions"  # a Fireworks row has no url: its body is a chat completion
MAX_LINES = 50_000  # OpenAI's limit of requests per batch
MAX_CUSTOM_ID_CHARS = 512


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch, as its input file gave it."""

    line: int  # 1-based line of the input file
    custom_id: str
    url: str
    body: dict[str, Any]


def looks_like_batch_rows(path: Path) -> bool:
    """Whether the file's first row is a batch request (`custom_id` and `body`) rather than SFT data; how a
    Fireworks dataset upload, which names no purpose, is told apart."""
    with open(path, "rb") as file:
        for raw in file:
            if raw.strip():
                try:
                    row = json.loads(raw)
                except ValueError:
                    return False
                return isinstance(row, dict) and "custom_id" in row and "body" in row
    return False


def validate_batch_file(
    path: Path, *, url_required: bool = True, max_problems: int = 100
) -> ValidationReport:
    """Every line's envelope checked; the report names each problem's line. `url_required`: OpenAI's lines
    (method and url required) rather than Fireworks' rows (both optional)."""
    collector = ProblemCollector(max_problems)
    count = 0
    for item in _read(path, url_required):
        if isinstance(item, BatchLine):
            count += 1
        else:
            collector.add(item)
    if count == 0 and collector.error_count == 0:
        collector.add(Problem(None, None, "empty_file", "the file has no requests"))
    if count > MAX_LINES:
        collector.add(
            Problem(None, None, "too_many_requests", f"{count} requests; a batch holds at most {MAX_LINES}")
        )
    return ValidationReport(
        ok=collector.error_count == 0,
        example_count=count,
        problems=collector.problems,
        error_count=collector.error_count,
        warning_count=collector.warning_count,
        rows_without_trainable_tokens=0,
        rows_over_max_context=0,
        estimated_token_count=None,
        trainable_token_count=None,
        max_context_length=None,
    )


def read_batch_lines(
    path: Path, *, url_required: bool = True, max_line_bytes: int | None = None
) -> list[BatchLine]:
    """The requests of a file that passed validate_batch_file; ValueError naming the first problem otherwise,
    also for a line longer than `max_line_bytes` (the server's request body limit: a line is a request)."""
    lines: list[BatchLine] = []
    for item in _read(path, url_required, max_line_bytes):
        if isinstance(item, Problem):
            raise ValueError(str(item))
        lines.append(item)
    return lines


def _read(path: Path, url_required: bool, max_line_bytes: int | None = None) -> Iterator[BatchLine | Problem]:
    seen: dict[str, int] = {}
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            if max_line_bytes is not None and len(raw) > max_line_bytes:
                yield _problem(
                    number,
                    "line_too_large",
                    f"the line is {len(raw)} bytes, over this server's request body limit of {max_line_bytes}",
                )
                continue
            item = _parse(raw, number, url_required)
            if isinstance(item, BatchLine):
                first = seen.setdefault(item.custom_id, number)
                if first != number:
                    item = _problem(
                        number, "duplicate_custom_id", f"custom_id {item.custom_id!r} is also on line {first}"
                    )
            yield item


def _parse(raw: bytes, number: int, url_required: bool) -> BatchLine | Problem:
    try:
        row = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        return _problem(number, "invalid_utf8", "the line is not valid UTF-8")
    except ValueError as error:
        return _problem(number, "invalid_json", f"the line is not valid JSON: {error}")
    if not isinstance(row, dict):
        return _problem(number, "invalid_request", "the line must be a JSON object")
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _problem(number, "missing_custom_id", "custom_id is required and must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return _problem(number, "invalid_custom_id", f"custom_id is over {MAX_CUSTOM_ID_CHARS} characters")
    method = row.get("method", None if url_required else "POST")
    if method != "POST":
        return _problem(number, "invalid_method", f"method must be 'POST', got {method!r}")
    url = row.get("url", None if url_required else FIREWORKS_URL)
    if url not in BATCH_URLS:
        return _problem(number, "invalid_url", f"url must be one of {', '.join(BATCH_URLS)}, got {url!r}")
    body = row.get("body")
    if not isinstance(body, dict):
        return _problem(number, "invalid_body", "body is required and must be a JSON object")
    unknown = sorted(set(row) - {"custom_id", "method", "url", "body"})
    if unknown:
        return _problem(number, "unknown_field", f"unknown field(s) {', '.join(unknown)}")
    return BatchLine(number, custom_id, url, body)


def _problem(line: int, code: str, message: str) -> Problem:
    return Problem(line, None, code, message)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
