"""Incremental scan of one JSON object's top level, for tool calls that arrive a few characters at a time.

It finds where each top-level key's value starts and ends in the raw text without waiting for the object to
close, so a streaming parser can forward the raw characters of `arguments` as they come.
"""

from __future__ import annotations

import json

_WHITESPACE = " \t\r\n"
_SCALAR_START = "-0123456789tfn"


class JsonObjectScanner:
    """Feed characters; the scan stops after the object's closing brace (`done`) or at the first character
    that cannot continue a JSON object (`failed`)."""

    def __init__(self) -> None:
        self.raw = ""
        self.keys: list[str] = []  # top-level keys in order of appearance
        self.spans: dict[
            str, tuple[int, int | None]
        ] = {}  # key -> (value start, value end or None while open)
        self._state = "start"
        self._key_start = 0
        self._value_kind = ""  # "string" | "container" | "scalar"
        self._depth = 0
        self._in_string = False
        self._escape = False

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def failed(self) -> bool:
        return self._state == "failed"

    def feed(self, text: str) -> int:
        """Scan `text`; returns how many of its characters belong to the object (all, unless it ended)."""
        if self._state in ("done", "failed"):
            return 0
        for offset, char in enumerate(text):
            self._step(char)
            if self._state == "failed":
                return offset
            self.raw += char
            if self._state == "done":
                return offset + 1
        return len(text)

    def string_value(self, key: str) -> str | None:
        """The decoded value of `key` once complete, if it is a JSON string."""
        span = self.spans.get(key)
        if span is None or span[1] is None or self.raw[span[0]] != '"':
            return None
        try:
            value = json.loads(self.raw[span[0] : span[1]])
        except ValueError:
            return None
        return value if isinstance(value, str) else None

    def _step(self, char: str) -> None:
        position = len(self.raw)
        match self._state:
            case "start":
                if char == "{":
                    self._state = "key_or_end"
                elif char not in _WHITESPACE:
                    self._state = "failed"
            case "key_or_end" | "key_start":
                if char == '"':
                    self._state, self._key_start, self._escape = "key", position, False
                elif char == "}" and self._state == "key_or_end":
                    self._state = "done"
                elif char not in _WHITESPACE:
                    self._state = "failed"
            case "key":
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._end_key(self.raw[self._key_start :] + char)
            case "colon":
                if char == ":":
                    self._state = "value_start"
                elif char not in _WHITESPACE:
                    self._state = "failed"
            case "value_start":
                self._start_value(char, position)
            case "value":
                self._continue_value(char, position)
            case "after_value":
                self._after_value(char)

    def _end_key(self, quoted: str) -> None:
        try:
            key = json.loads(quoted)
        except ValueError:
            self._state = "failed"
            return
        self.keys.append(key)
        self._state = "colon"

    def _start_value(self, char: str, position: int) -> None:
        if char in _WHITESPACE:
            return
        self.spans[self.keys[-1]] = (position, None)
        self._state, self._depth, self._in_string, self._escape = "value", 0, False, False
        if char == '"':
            self._value_kind, self._in_string = "string", True
        elif char in "{[":
            self._value_kind, self._depth = "container", 1
        elif char in _SCALAR_START:
            self._value_kind = "scalar"
        else:
            self._state = "failed"

    def _continue_value(self, char: str, position: int) -> None:
        if self._value_kind == "scalar":
            if char in _WHITESPACE or char in ",}":
                self._close_value(position)
                self._after_value(char)
            return
        if self._in_string:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
                if self._depth == 0:
                    self._close_value(position + 1)
            return
        if char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            if self._depth == 0:
                self._close_value(position + 1)

    def _close_value(self, end: int) -> None:
        key = self.keys[-1]
        self.spans[key] = (self.spans[key][0], end)
        self._state = "after_value"

    def _after_value(self, char: str) -> None:
        if char == ",":
            self._state = "key_start"
        elif char == "}":
            self._state = "done"
        elif char not in _WHITESPACE:
            self._state = "failed"
