"""Regexes measured before compiling (also JSON schema patterns and a grammar's /regex/ tokens): repetition
bounds, alone and nested."""

from __future__ import annotations

import re

from ember.structured.limits import DEFAULT_LIMITS, GrammarLimits, over_limit

# Every pattern here is linear: no nested quantifier can backtrack (possessive *+ / ++), and no token scans
# past where the next one of its kind could start, so a hostile text cannot make tokenizing quadratic.
_REGEX_TOKEN = re.compile(
    r"""
    (?P<escape>\\(?:[pPxu]\{[^}\n]{0,64}\}|.))
    | (?P<cls>\[\^?\]?(?:\[:[a-z]{1,16}:\]|\\.|[^\]\\\[])*+\])
    | (?P<open>\((?:\?(?:[a-zA-Z:=!-]*|P?<[^>]*>))?)
    | (?P<close>\))
    | (?P<counted>\{(?P<low>\d+)(?P<comma>,(?P<high>\d*))?\}[?+]?)
    | (?P<quantifier>[*+?][?+]?)
    | (?P<inline_flags>\(\?[a-zA-Z-]+\))
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def repeat_bound(digits: str) -> int:
    return int(digits) if len(digits) <= 12 else 10**12


class RepeatMeter:
    """Largest single repetition bound and largest product of nested bounds, fed one item at a time.

    Each open group keeps the largest product inside it; a bound after an item multiplies that item's."""

    def __init__(self, subject: str, limits: GrammarLimits) -> None:
        self.subject = subject
        self.limits = limits
        self.frames: list[int] = [1]  # largest product inside each open group
        self.last = 0  # product inside the last item (0: no item to repeat)

    def atom(self) -> None:
        self.last = 1
        self.frames[-1] = max(self.frames[-1], 1)

    def open(self) -> None:
        self.frames.append(1)
        self.last = 0

    def close(self) -> None:
        if len(self.frames) > 1:
            inner = self.frames.pop()
            self.last = inner
            self.frames[-1] = max(self.frames[-1], inner)

    def separator(self) -> None:
        self.last = 0

    def repeat(self, low: int, high: int | None, text: str) -> None:
        bound = max(low, high or 0)
        if bound > self.limits.max_repeat:
            raise over_limit(self.subject, f"repetition bound of {text}", bound, self.limits.max_repeat)
        if self.last:
            product = self.last * max(bound, 1)
            if product > self.limits.max_nested_repeat:
                raise over_limit(
                    self.subject,
                    "product of nested repetition bounds",
                    product,
                    self.limits.max_nested_repeat,
                )
            self.frames[-1] = max(self.frames[-1], product)
            self.last = product


def check_regex(regex: str, limits: GrammarLimits = DEFAULT_LIMITS, subject: str = "regex") -> None:
    """Repetition bounds of a regex: each {n,m} and the product of nested ones ("((a|aa){100}){100}")."""
    meter = RepeatMeter(subject, limits)
    for match in _REGEX_TOKEN.finditer(regex):
        kind = match.lastgroup
        if kind == "open":
            meter.open()
        elif kind == "close":
            meter.close()
        elif kind == "counted":
            high = match.group("high")
            low = repeat_bound(match.group("low"))
            meter.repeat(low, repeat_bound(high) if high else None, match.group("counted"))
        elif kind == "quantifier":
            pass  # * + ? multiply by one: unbounded repetition is not unrolled
        elif kind == "other" and match.group() == "|":
            meter.separator()
        elif kind != "inline_flags":
            meter.atom()
