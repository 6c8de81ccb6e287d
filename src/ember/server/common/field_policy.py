"""No silently ignored request fields: what a body field ember does not define means.

A request body is read with every field it carries. Fields ember defines are honoured by the serving code. Of the
rest, those another API defines for the same route (OpenAI, Fireworks, Anthropic, vLLM, llama.cpp: the tables in
ember.server.common.unsupported_fields) are refused with a 400 naming them, unless their value is the one that
changes nothing (`use_beam_search: false`, `mirostat: 0`), or the field only acts through another one that is off
(llama.cpp's `mirostat_tau` without `mirostat`). A field nobody defines is accepted and logged once per name per
server, as a client's typo should not fail a request that OpenAI would serve.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ember.server.common.errors import invalid_request

logger = logging.getLogger("ember.server")


@dataclass(frozen=True)
class KnownField:
    """A field another API defines for a route, which ember does not implement."""

    defined_by: str  # "vLLM", "llama.cpp", "OpenAI", "Fireworks", "Anthropic"
    off: tuple[Any, ...] = (None,)  # values that ask for nothing: accepted
    gate: str | None = None  # the field this one only modifies: accepted while that one is off
    instead: str = ""  # what to send instead, when ember has it under another name

    def is_off(self, value: Any) -> bool:
        return any(_same_kind(value, off) and value == off for off in self.off)


class UnknownFieldLog:
    """The field names this server has already logged as unknown (one server-owned set, so each is logged
    once per server, not once per request)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def note(self, route: str, names: list[str]) -> list[str]:
        """Logs the names not seen before; returns them (what was logged now)."""
        with self._lock:
            new = [name for name in names if name not in self._seen]
            self._seen.update(new)
        for name in new:
            logger.warning(
                "%s: the request field %r is not defined by ember, OpenAI, Fireworks, Anthropic, vLLM or "
                "llama.cpp; it is accepted and has no effect (logged once per field name)",
                route,
                name,
            )
        return new


def check_fields(
    route: str,
    extra: Mapping[str, Any] | None,
    known: Mapping[str, KnownField],
    log: UnknownFieldLog,
) -> None:
    """Refuses (400 naming it) the first known-but-unsupported field of `extra` that asks for something; logs
    the unknown ones. `extra`: the body's fields its model does not declare."""
    if not extra:
        return
    unknown: list[str] = []
    for sent in extra:
        field = known.get(sent)
        if field is None:
            unknown.append(sent)
            continue
        # A sampler's parameter changes nothing unless the sampler is on: what decides is the sampler.
        name = sent if field.gate is None else field.gate
        field = known[name]
        if not field.is_off(extra.get(name)):
            raise invalid_request(_refusal(name, field), param=name, code="unsupported_parameter")
    if unknown:
        log.note(route, unknown)


def _same_kind(value: Any, off: Any) -> bool:
    # `0 == False` in Python: an off value must match in kind too, so `use_beam_search: 0` is not false; an
    # int and a float are the same kind (`repeat_penalty: 1` is 1.0).
    if isinstance(value, bool) or isinstance(off, bool):
        return type(value) is type(off)
    numbers = (int, float)
    if isinstance(value, numbers) and isinstance(off, numbers):
        return True
    return type(value) is type(off)


def _refusal(name: str, field: KnownField) -> str:
    accepted = ", ".join(_json(v) for v in field.off if v is not None)
    message = f"{name} ({field.defined_by}) is not supported by this server"
    if accepted:
        message += f"; leave it out or send {accepted}"
    else:
        message += "; leave it out"
    if field.instead:
        message += f"; {field.instead}"
    return message


def _json(value: Any) -> str:
    return json.dumps(value)
