"""The streaming state machine that reads tool calls out of a reply, shared by every template family.

A reply is content, then (after a marker, or from its very start) call objects between punctuation. States:
- `lead`: the reply's start, where a family may write a bare call object (optionally after a tag);
- `text`: content, up to the family's marker (without a marker, everything from here on is content);
- `call`: one call object being read (tool_calls.CallObjectStream);
- any other state is punctuation around the calls, read by the family's table: `{state: {token: next}}`.
  After each call the machine is in `after_call`; the calls may end there.

Text that turns out not to be a call (no name, broken JSON before the arguments, unexpected punctuation) is
content after all, markers and punctuation included: nothing the model wrote is dropped, except whitespace at
the end of the content and separators after the last call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ember.chat.tool_calls import CallObjectStream, ToolStreamDelta
from ember.structured.tools import ToolCallSyntax

WHITESPACE = " \t\r\n"
LEAD, TEXT, CALL, AFTER_CALL = "lead", "text", "call", "after_call"


@dataclass(frozen=True)
class ToolFamily:
    """How one chat-template family writes its tool calls, as the shared machine reads them."""

    syntax: ToolCallSyntax | None  # None: the plain fallback, all text is content
    marker: str | None = None  # opens the calls anywhere in the content
    after_marker: str = CALL  # the state the marker leads to
    bare_lead: bool = False  # a reply that opens with `{` is a call (its name first)
    lead_tag: str | None = None  # may come before that opening `{`
    name_first: bool = False  # every call object must start with its name
    skip: str = WHITESPACE  # skipped before punctuation
    punctuation: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # state -> {token: next}
    # Punctuation states where the reply may end: what is left there is no content (e.g. a closing tag a
    # stop string or max_tokens cut off).
    ends: frozenset[str] = frozenset({AFTER_CALL})


class _ContentGate:
    """Holds trailing whitespace until more content follows it: content ends without the whitespace that
    separated it from tool calls, and whitespace-only content is dropped."""

    def __init__(self) -> None:
        self._held = ""

    def push(self, text: str) -> str:
        buffer = self._held + text
        ready = buffer.rstrip(WHITESPACE)
        self._held = buffer[len(ready) :]
        return ready


class ToolCallStream:
    """Streaming parser for one response: feed(delta) -> deltas; finish() once the text is complete."""

    def __init__(self, family: ToolFamily, new_id: Callable[[], str]) -> None:
        self.family = family
        self.syntax = family.syntax
        self._new_id = new_id
        self._gate = _ContentGate() if family.syntax is not None else None
        self._pending = ""  # received text not yet attributed
        self._unattributed = (
            ""  # structural text consumed since the last committed call (content on fallback)
        )
        self._call: CallObjectStream | None = None
        self._num_calls = 0
        self._mode = LEAD if family.bare_lead else TEXT
        self._out: list[ToolStreamDelta] = []
        self._finished = False

    def feed(self, delta: str) -> list[ToolStreamDelta]:
        if self._finished:
            raise ValueError("feed() after finish()")
        self._pending += delta
        self._run(final=False)
        return self._take()

    def finish(self) -> list[ToolStreamDelta]:
        if not self._finished:
            self._finished = True
            self._run(final=True)
        return self._take()

    def _take(self) -> list[ToolStreamDelta]:
        out, self._out = self._out, []
        return out

    def _run(self, final: bool) -> None:
        steps = {LEAD: self._lead, TEXT: self._text, CALL: self._advance_call}
        while steps.get(self._mode, self._punctuation)(final):
            pass

    # -- the states; each returns whether to go on (False: it waits for more text, or the text is done) ----

    def _lead(self, final: bool) -> bool:
        tag = self.family.lead_tag
        lead = self._pending.lstrip(WHITESPACE)
        if tag and lead.startswith(tag):
            lead = lead[len(tag) :].lstrip(WHITESPACE)
        if not lead or (tag and tag.startswith(lead) and lead != tag):
            if not final:
                return False
            self._mode = TEXT
        elif lead.startswith("{"):
            self._unattributed, self._pending = self._pending[: len(self._pending) - len(lead)], lead
            self._start_call(name_first=True)
        else:
            self._mode = TEXT
        return True

    def _text(self, final: bool) -> bool:
        marker = self.family.marker
        if marker is None:
            self._content(self._unattributed + self._pending)
            self._unattributed, self._pending = "", ""
            return False
        found = self._pending.find(marker)
        if found < 0:  # a tail that may be the marker's beginning waits for more text
            keep = 0 if final else _partial_suffix(self._pending, marker)
            self._content(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            return False
        self._content(self._pending[:found])
        self._unattributed = marker
        self._pending = self._pending[found + len(marker) :]
        if self.family.after_marker == CALL:
            self._start_call(self.family.name_first)
        else:
            self._mode = self.family.after_marker
        return True

    def _advance_call(self, final: bool) -> bool:
        call = self._call
        assert call is not None
        consumed, deltas = call.feed(self._pending)
        self._unattributed += self._pending[:consumed]
        self._pending = self._pending[consumed:]
        if final and not call.done and not call.rejected:
            deltas += call.finish()
        if call.committed:
            self._unattributed = ""
        self._out.extend(ToolStreamDelta(tool_call=d) for d in deltas)
        if call.rejected:
            self._content(self._unattributed)
            self._unattributed, self._call, self._mode = "", None, TEXT
            return True
        if call.done:
            self._num_calls += 1
            self._call, self._mode = None, AFTER_CALL
            return True
        if final:
            self._fallback()
        return False

    def _punctuation(self, final: bool) -> bool:
        tokens = self.family.punctuation[self._mode]
        rest = self._pending.lstrip(self.family.skip)
        skipped = self._pending[: len(self._pending) - len(rest)]
        token = next((t for t in tokens if rest.startswith(t)), None)
        if token is None:
            if not final and any(t.startswith(rest) for t in tokens):
                return False  # an empty or partial token: wait
            if not rest:
                if self._mode in self.family.ends:
                    self._pending = ""  # the calls ended: trailing separators are no content
                else:
                    self._fallback()
                return False
            self._content(self._unattributed)  # not the expected punctuation: content from here on
            self._unattributed, self._mode = "", TEXT
            return True
        self._unattributed += skipped
        following = tokens[token]
        if following == CALL:
            self._pending = rest
            self._start_call(self.family.name_first)
            return True
        self._pending = rest[len(token) :]
        self._unattributed = "" if following == TEXT else self._unattributed + token
        self._mode = following
        return True

    # -- helpers ------------------------------------------------------------------------------------------

    def _content(self, text: str) -> None:
        text = self._gate.push(text) if self._gate is not None else text
        if text:
            self._out.append(ToolStreamDelta(content=text))

    def _start_call(self, name_first: bool) -> None:
        self._call = CallObjectStream(self._num_calls, self._new_id(), name_first)
        self._mode = CALL

    def _fallback(self) -> None:
        """Structural text that did not continue as expected: it is content after all."""
        self._content(self._unattributed + self._pending)
        self._unattributed, self._pending, self._mode = "", "", TEXT


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0
