"""A big JSON body parsed a piece at a time: each member of the top-level object, and each item of a top-level
array member (chat messages), is one call of the C decoder, and the GIL is let go between pieces.

`json.loads` of a few MiB is one native call that keeps the GIL throughout (~60 ms for 100k chat messages on a
loaded 2-core machine); the event loop, on another thread, cannot answer anyone meanwhile. The pieces give the
same value as `json.loads`, including its errors' positions (every piece is decoded from the whole text)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Items of an array decoded between two lets-go of the GIL: each is small, the pauses cost ~1 us.
ITEMS_PER_PAUSE = 256


def loads_in_pieces(text: str, parse_constant: Callable[[str], Any]) -> Any:
    """json.loads(text, parse_constant=...), decoded piece by piece when the document is an object."""
    decoder = json.JSONDecoder(parse_constant=parse_constant)
    start = _skip(text, 0)
    if not text.startswith("{", start):
        return decoder.decode(text)
    value, end = _object(decoder, text, start)
    end = _skip(text, end)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _object(decoder: json.JSONDecoder, text: str, start: int) -> tuple[dict[str, Any], int]:
    """The object opening at text[start] == "{", and the index after its "}"."""
    members: dict[str, Any] = {}  # a repeated key keeps its last value, as json.loads does
    index = _skip(text, start + 1)
    if text.startswith("}", index):
        return members, index + 1
    while True:
        if not text.startswith('"', index):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, index)
        key, index = decoder.raw_decode(text, index)
        index = _skip(text, index)
        if not text.startswith(":", index):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
        index = _skip(text, index + 1)
        if text.startswith("[", index):
            members[key], index = _array(decoder, text, index)
        else:
            members[key], index = decoder.raw_decode(text, index)
        time.sleep(0)  # lets go of the GIL: a thread waiting for it (the event loop) runs now
        index = _skip(text, index)
        if text.startswith("}", index):
            return members, index + 1
        if not text.startswith(",", index):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
        index = _skip(text, index + 1)


def _array(decoder: json.JSONDecoder, text: str, start: int) -> tuple[list[Any], int]:
    """The array opening at text[start] == "[", item by item, and the index after its "]"."""
    items: list[Any] = []
    index = _skip(text, start + 1)
    if text.startswith("]", index):
        return items, index + 1
    while True:
        item, index = decoder.raw_decode(text, index)
        items.append(item)
        if len(items) % ITEMS_PER_PAUSE == 0:
            time.sleep(0)
        index = _skip(text, index)
        if text.startswith("]", index):
            return items, index + 1
        if not text.startswith(",", index):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
        index = _skip(text, index + 1)
