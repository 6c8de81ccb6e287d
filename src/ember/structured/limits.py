"""The limits an untrusted schema or grammar is measured against (grammar_limits.py applies them), and the
JSON helpers every measure shares. Each violation is a ValueError naming the limit and the value found."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GrammarLimits:
    # every kind
    max_source_bytes: int = 256 * 1024  # a schema, grammar or regex as sent
    # JSON schemas
    max_json_depth: int = 100  # nested objects/arrays in the schema document (llguidance's JSON parser: ~125)
    max_depth_through_refs: int = 200  # the same, following each $ref into its target
    max_ref_chain: int = 100  # $refs followed one after another
    max_alternatives: int = 1000  # anyOf/oneOf alternatives at one place, nested ones and $refs flattened
    max_all_of: int = 100  # subschemas in one allOf
    max_properties: int = 2000  # properties of one object
    max_optional_properties: int = 400  # of which not required (each costs ~4 parser items; the cap is 2000)
    max_enum: int = 10_000  # values of one enum
    max_size_bound: int = 1_000_000  # minLength/maxLength/minItems/maxItems/... values
    # regexes (also JSON schema patterns and a grammar's /regex/ tokens) and grammar repetitions
    max_repeat: int = 10_000  # one {n,m} or ~n..m bound
    max_nested_repeat: int = 10_000  # product of the bounds of repetitions nested in each other
    # GBNF and Lark grammars
    max_rules: int = 500
    max_rule_alternatives: int = 1000  # alternatives of one rule (not of a terminal: that is one regex)
    max_rule_chain: int = 200  # rules referenced one inside another (cycles cut)
    # choice lists
    max_choices: int = 10_000
    max_choice_bytes: int = 1024 * 1024


DEFAULT_LIMITS = GrammarLimits()


def over_limit(subject: str, measure: str, value: int, limit: int) -> ValueError:
    return ValueError(f"{subject}: {measure} is {value}, over the limit of {limit}")


def parse_json(text: str, subject: str, limits: GrammarLimits = DEFAULT_LIMITS) -> Any:
    """json.loads, with a nesting too deep for Python's parser a ValueError naming the depth limit."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(
            f"{subject}: nesting depth is over 900, over the limit of {limits.max_json_depth}"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid {subject}: not valid JSON ({error})") from None


def json_depth(value: Any, stop_above: int | None = None) -> int:
    """Nesting depth of objects and arrays in a parsed JSON value (a scalar is 0), without recursion; with
    `stop_above`, counting stops as soon as the depth passes it (a hostile body is not walked to its end)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > deepest:
            deepest = depth
            if stop_above is not None and deepest > stop_above:
                return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def check_json_depth(value: Any, subject: str, limits: GrammarLimits = DEFAULT_LIMITS) -> None:
    depth = json_depth(value)
    if depth > limits.max_json_depth:
        raise over_limit(subject, "nesting depth", depth, limits.max_json_depth)
