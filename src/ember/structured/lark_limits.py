"""GBNF (converted) and Lark grammars measured before compiling: rules, alternatives, repetitions and chains
of rule references."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ember.structured.limits import DEFAULT_LIMITS, GrammarLimits, over_limit
from ember.structured.regex_limits import RepeatMeter, check_regex, repeat_bound
from ember.structured.schema_limits import check_schema

_LARK_TOKEN = re.compile(
    r"""
    (?P<newline>\n)
    | (?P<space>[ \t\r]+)
    | (?P<comment>//[^\n]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*+"i?)
    | (?P<regex>/(?:[^/\\\n]|\\.)++/[a-z]*)
    | (?P<special><(?:\|[^|\n]{0,128}\||\[[^\]\n]{0,64}\])>)
    | (?P<directive>%[a-z_]+)
    | (?P<name>[?!]?@?[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>\d+)
    | (?P<range>\.\.)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class _Rule:
    name: str
    alternatives: int = 1
    references: set[str] | None = None


def check_lark(text: str, limits: GrammarLimits = DEFAULT_LIMITS, subject: str = "grammar") -> None:
    """Rules, alternatives per rule, repetition bounds, reference chains, and embedded %json schemas and
    /regex/ tokens of a llguidance Lark grammar."""
    tokens = _lark_tokens(text, limits, subject)
    rules: dict[str, _Rule] = {}
    current: _Rule | None = None
    meter = RepeatMeter(subject, limits)
    depth = 0
    index = 0
    line_start = True
    while index < len(tokens):
        kind, value = tokens[index]
        if kind == "newline":
            line_start = True
            index += 1
            continue
        if line_start and kind == "name":
            after = _definition_end(tokens, index)
            if after is not None:
                name = value.lstrip("?!")
                current = rules.setdefault(name, _Rule(name, 1, set()))
                meter = RepeatMeter(subject, limits)
                depth = 0
                index = after
                line_start = False
                continue
        line_start = False
        index += 1
        if current is None or kind in ("directive", "json"):
            continue
        if kind == "other" and value in "([":
            depth += 1
            meter.open()
        elif kind == "other" and value in ")]":
            depth = max(0, depth - 1)
            meter.close()
        elif kind == "other" and value == "|":
            meter.separator()
            if depth == 0:
                current.alternatives += 1
        elif kind == "other" and value == "~":
            low, high, index = _tilde_bounds(tokens, index)
            if low is not None:
                meter.repeat(low, high, "~" + (f"{low}" if high is None else f"{low}..{high}"))
        elif kind == "other" and value == "{":
            low, high, end = _brace_bounds(tokens, index)
            if low is not None:
                meter.repeat(low, high, "{" + (f"{low}" if high is None else f"{low},{high}") + "}")
                index = end
        elif kind == "name":
            assert current.references is not None
            current.references.add(value.lstrip("?!"))
            meter.atom()
        elif kind in ("string", "regex", "special"):
            meter.atom()
    if len(rules) > limits.max_rules:
        raise over_limit(subject, "number of rules", len(rules), limits.max_rules)
    # A terminal's (upper-case rule's) alternatives are one regex; a rule's are parser items of one step.
    widest = max(
        (r for r in rules.values() if not r.name.isupper()), key=lambda r: r.alternatives, default=None
    )
    if widest is not None and widest.alternatives > limits.max_rule_alternatives:
        measure = f"number of alternatives of rule {widest.name!r}"
        raise over_limit(subject, measure, widest.alternatives, limits.max_rule_alternatives)
    _check_rule_chain(rules, limits, subject)


def _lark_tokens(text: str, limits: GrammarLimits, subject: str) -> list[tuple[str, str]]:
    """(kind, text) of each token; %json / %llguidance / %regex bodies are parsed (and %json schemas checked)
    and appear as one "json" token; regex tokens are checked."""
    tokens: list[tuple[str, str]] = []
    decoder = json.JSONDecoder()
    decoding = True  # after one body fails to parse, llguidance refuses the grammar: parse no more (each
    # failure costs a pass over the text to find its line number, so many would be quadratic)
    position = 0
    while position < len(text):
        match = _LARK_TOKEN.match(text, position)
        assert match is not None  # `other` matches any character
        kind = match.lastgroup or "other"
        position = match.end()
        if kind in ("space", "comment"):
            continue
        value = match.group()
        if kind == "regex":
            check_regex(value[1 : value.rindex("/")], limits, f"{subject} regex")
        tokens.append((kind, value))
        if decoding and kind == "directive" and value in ("%json", "%llguidance", "%regex"):
            start = position
            while start < len(text) and text[start] in " \t\r\n":
                start += 1
            if start < len(text) and text[start] == "{":
                try:
                    body, position = decoder.raw_decode(text, start)
                except RecursionError:
                    raise ValueError(
                        f"{subject}: nesting depth of a {value} body is over 900, over the limit of "
                        f"{limits.max_json_depth}"
                    ) from None
                except json.JSONDecodeError:
                    decoding = False  # llguidance reports the syntax error
                    continue
                if value == "%json":
                    check_schema(body, limits, f"{subject} %json schema")
                tokens.append(("json", ""))
    return tokens


def _definition_end(tokens: list[tuple[str, str]], index: int) -> int | None:
    """Index after `name:`, `name[params]:` or `NAME.priority:` starting at `index`, else None."""
    index += 1
    if index < len(tokens) and tokens[index] == ("other", "["):
        while index < len(tokens) and tokens[index] != ("other", "]") and tokens[index][0] != "newline":
            index += 1
        index += 1
    elif index + 1 < len(tokens) and tokens[index] == ("other", ".") and tokens[index + 1][0] == "number":
        index += 2
    if index < len(tokens) and tokens[index] == ("other", ":"):
        return index + 1
    return None


def _tilde_bounds(tokens: list[tuple[str, str]], index: int) -> tuple[int | None, int | None, int]:
    """After `~` (tokens[index - 1]): `n` or `n..m`, optionally in parentheses."""
    paren = index < len(tokens) and tokens[index] == ("other", "(")
    at = index + 1 if paren else index
    if at >= len(tokens) or tokens[at][0] != "number":
        return None, None, index
    low = repeat_bound(tokens[at][1])
    at += 1
    high: int | None = None
    if at + 1 < len(tokens) and tokens[at][0] == "range" and tokens[at + 1][0] == "number":
        high = repeat_bound(tokens[at + 1][1])
        at += 2
    if paren and at < len(tokens) and tokens[at] == ("other", ")"):
        at += 1
    return low, high, at


def _brace_bounds(tokens: list[tuple[str, str]], index: int) -> tuple[int | None, int | None, int]:
    """After `{` (tokens[index - 1]): `n}`, `n,}` or `n,m}`."""
    if index >= len(tokens) or tokens[index][0] != "number":
        return None, None, index
    low = repeat_bound(tokens[index][1])
    at = index + 1
    high: int | None = None
    if at < len(tokens) and tokens[at] == ("other", ","):
        at += 1
        if at < len(tokens) and tokens[at][0] == "number":
            high = repeat_bound(tokens[at][1])
            at += 1
    if at < len(tokens) and tokens[at] == ("other", "}"):
        return low, high, at + 1
    return None, None, index


def _check_rule_chain(rules: dict[str, _Rule], limits: GrammarLimits, subject: str) -> None:
    """Longest chain of rules referenced one inside another (a reference back into the chain is a cycle,
    which llguidance handles, and is cut), by an iterative post-order walk."""
    longest: dict[str, int] = {}
    on_path: set[str] = set()
    for root in rules:
        if root in longest:
            continue
        stack: list[tuple[str, list[str], int]] = [(root, sorted(rules[root].references or ()), 0)]
        on_path.add(root)
        while stack:
            name, todo, best = stack[-1]
            if todo:
                child = todo.pop()
                if child in longest:
                    stack[-1] = (name, todo, max(best, longest[child] + 1))
                elif child in rules and child not in on_path:
                    on_path.add(child)
                    stack.append((child, sorted(rules[child].references or ()), 0))
                continue
            stack.pop()
            on_path.discard(name)
            longest[name] = best
            if stack:
                parent, parent_todo, parent_best = stack[-1]
                stack[-1] = (parent, parent_todo, max(parent_best, best + 1))
    chain = max(longest.values(), default=0)
    if chain > limits.max_rule_chain:
        raise over_limit(subject, "length of a chain of rule references", chain, limits.max_rule_chain)
