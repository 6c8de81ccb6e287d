"""How big and how deep an untrusted schema or grammar may be, measured before llguidance sees it.

llguidance crashes (SIGSEGV: stack overflow in its recursive compiler), panics or gives up part-way through
generation on inputs past some size; every limit here sits well inside what it handles in well under a
second, and well above what real schemas and grammars use. docs/decisions.md ("Untrusted grammars") has the
measured thresholds. Every violation is a ValueError naming the limit and the value found.

Everything here is iterative (no Python recursion) and linear in the input, so measuring cannot itself fail
on a hostile input.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ember.structured.spec import StructuredSpec


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


def _over(subject: str, measure: str, value: int, limit: int) -> ValueError:
    return ValueError(f"{subject}: {measure} is {value}, over the limit of {limit}")


def check_spec_limits(spec: StructuredSpec, limits: GrammarLimits = DEFAULT_LIMITS) -> None:
    """ValueError naming the limit when `spec` is bigger or deeper than ember compiles."""
    if spec.kind == "choice":
        check_choices(spec.source, limits)
        return
    subject = {"json_schema": "JSON schema", "regex": "regex", "gbnf": "grammar", "lark": "grammar"}[
        spec.kind
    ]
    size = len(spec.source.encode("utf-8", errors="replace"))
    if size > limits.max_source_bytes:
        raise _over(subject, "size in bytes", size, limits.max_source_bytes)
    match spec.kind:
        case "json_schema":
            check_schema(parse_json(spec.source, "JSON schema", limits), limits)
        case "regex":
            check_regex(spec.source, limits, "regex")
        case "gbnf":
            rules = spec.source.count("::=")
            if rules > limits.max_rules:
                raise _over("grammar", "number of rules", rules, limits.max_rules)
            # The text is converted to Lark (llguidance's gbnf_to_lark) before it is compiled; grammar.py
            # measures the converted grammar with check_lark.
        case "lark":
            check_lark(spec.source, limits)


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


def json_depth(value: Any) -> int:
    """Nesting depth of objects and arrays in a parsed JSON value (a scalar is 0), without recursion."""
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
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def check_json_depth(value: Any, subject: str, limits: GrammarLimits = DEFAULT_LIMITS) -> None:
    depth = json_depth(value)
    if depth > limits.max_json_depth:
        raise _over(subject, "nesting depth", depth, limits.max_json_depth)


# ---------------------------------------------------------------------------------------------------- schemas

# What a value in a schema document is: a schema (its keywords are checked), a map from names to schemas
# ("properties": a property may be called "enum"), or data (only its depth counts).
_SCHEMA, _MAP, _DATA = 0, 1, 2
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "example", "x-guidance", "description"})
_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _children(node: Any, role: int) -> list[tuple[Any, int]]:
    """The dict and list values under `node`, each with its role."""
    if isinstance(node, list):
        return [(item, role) for item in node if isinstance(item, dict | list)]
    out: list[tuple[Any, int]] = []
    for key, child in node.items():
        if not isinstance(child, dict | list):
            continue
        if role == _SCHEMA and key in _DATA_KEYWORDS:
            out.append((child, _DATA))
        elif role == _SCHEMA and key in _MAP_KEYWORDS and isinstance(child, dict):
            out.append((child, _MAP))
        else:
            out.append((child, _DATA if role == _DATA else _SCHEMA))
    return out


_SIZE_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)


def check_schema(schema: Any, limits: GrammarLimits = DEFAULT_LIMITS, subject: str = "JSON schema") -> None:
    """Depth, $ref chains, alternatives, properties, enums, size bounds and patterns of a parsed schema."""
    check_json_depth(schema, subject, limits)
    if not isinstance(schema, dict):
        return
    stack: list[tuple[Any, int]] = [(schema, _SCHEMA)]
    while stack:
        node, role = stack.pop()
        if role == _SCHEMA and isinstance(node, dict):
            _check_schema_keywords(node, limits, subject)
        stack.extend(_children(node, role))
    _check_refs(schema, limits, subject)
    _check_alternatives(schema, limits, subject)


def _check_schema_keywords(node: dict[str, Any], limits: GrammarLimits, subject: str) -> None:
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > limits.max_enum:
        raise _over(subject, "number of enum values", len(enum), limits.max_enum)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) > limits.max_all_of:
        raise _over(subject, "number of allOf subschemas", len(all_of), limits.max_all_of)
    properties = node.get("properties")
    if isinstance(properties, dict):
        if len(properties) > limits.max_properties:
            raise _over(subject, "number of properties of one object", len(properties), limits.max_properties)
        required = node.get("required")
        required_names = (
            set(required)
            if isinstance(required, list) and all(isinstance(r, str) for r in required)
            else set()
        )
        optional = sum(1 for name in properties if name not in required_names)
        if optional > limits.max_optional_properties:
            raise _over(
                subject,
                "number of optional properties of one object",
                optional,
                limits.max_optional_properties,
            )
    for keyword in _SIZE_KEYWORDS:
        bound = node.get(keyword)
        if isinstance(bound, int | float) and not isinstance(bound, bool) and bound > limits.max_size_bound:
            raise _over(subject, keyword, _as_int(bound), limits.max_size_bound)
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        check_regex(pattern, limits, f"{subject} pattern")
    pattern_properties = node.get("patternProperties")
    if isinstance(pattern_properties, dict):
        for key in pattern_properties:
            check_regex(key, limits, f"{subject} patternProperties")


def _as_int(value: float) -> int:
    return int(value) if value < 1e18 else 10**18


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """The node a local JSON pointer ("#/$defs/a") names, or None."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _check_refs(schema: dict[str, Any], limits: GrammarLimits, subject: str) -> None:
    """Depth through $refs, longest $ref chain and flattened alternatives.

    One post-order walk over the schema graph (containment edges plus $ref edges), each node once: a node's
    (depth, ref hops) is the most over its children; a $ref back to a node still being walked (a recursive
    schema) counts as a leaf, as llguidance compiles it into a recursive rule instead of following it.
    """
    memo: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()

    def children(node: Any, role: int) -> list[tuple[Any, int, int]]:
        """(child, its role, 1 if reached through a $ref else 0); data is left out"""
        out = [(child, child_role, 0) for child, child_role in _children(node, role) if child_role != _DATA]
        ref = node.get("$ref") if role == _SCHEMA and isinstance(node, dict) else None
        if isinstance(ref, str):
            target = _resolve(schema, ref)
            if isinstance(target, dict | list):
                out.append((target, _SCHEMA, 1))
        return out

    # [node, children still to walk, deepest below, most hops below, hop of the edge that entered node]
    stack: list[list[Any]] = [[schema, children(schema, _SCHEMA), 0, 0, 0]]
    on_path.add(id(schema))
    while stack:
        frame = stack[-1]
        if frame[1]:
            child, role, hop = frame[1].pop()
            if id(child) in on_path:  # a recursive schema: llguidance makes a recursive rule of it
                continue
            if id(child) not in memo:
                on_path.add(id(child))
                stack.append([child, children(child, role), 0, 0, hop])
                continue
            child_depth, child_hops = memo[id(child)]
            frame[2] = max(frame[2], child_depth + 1)
            frame[3] = max(frame[3], child_hops + hop)
        else:
            node, _, depth, hops, hop = stack.pop()
            on_path.discard(id(node))
            memo[id(node)] = (depth, hops)
            if stack:
                stack[-1][2] = max(stack[-1][2], depth + 1)
                stack[-1][3] = max(stack[-1][3], hops + hop)
    # The root contains every node, so its values are the largest.
    depth, hops = memo[id(schema)]
    if hops > limits.max_ref_chain:
        raise _over(subject, "length of a $ref chain", hops, limits.max_ref_chain)
    if depth + 1 > limits.max_depth_through_refs:
        raise _over(subject, "nesting depth through $refs", depth + 1, limits.max_depth_through_refs)


def _check_alternatives(schema: dict[str, Any], limits: GrammarLimits, subject: str) -> None:
    """llguidance flattens nested anyOf/oneOf (and $refs to them) into one choice, and its parser refuses a
    step with more than 2000 items, about one per alternative: count the leaves of each tree of alternatives
    (a post-order walk, each list once; a list nested in itself counts as one leaf)."""

    def nested(node: Any) -> list[Any] | None:
        for _ in range(limits.max_ref_chain + 1):
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                break
            node = _resolve(schema, node["$ref"])
        if isinstance(node, dict):
            for keyword in ("anyOf", "oneOf"):
                alternatives = node.get(keyword)
                if isinstance(alternatives, list):
                    return alternatives
        return None

    widths: dict[int, int] = {}
    on_path: set[int] = set()

    def width(root: list[Any]) -> int:
        stack: list[list[Any]] = [[root, list(root), 0]]
        on_path.add(id(root))
        while stack:
            frame = stack[-1]
            if frame[1]:
                inner = nested(frame[1].pop())
                if inner is None or id(inner) in on_path:
                    frame[2] += 1
                elif id(inner) in widths:
                    frame[2] += widths[id(inner)]
                else:
                    on_path.add(id(inner))
                    stack.append([inner, list(inner), 0])
                continue
            alternatives, _, total = stack.pop()
            on_path.discard(id(alternatives))
            widths[id(alternatives)] = total
            if stack:
                stack[-1][2] += total
        return widths[id(root)]

    stack: list[tuple[Any, int]] = [(schema, _SCHEMA)]
    while stack:
        node, role = stack.pop()
        stack.extend(item for item in _children(node, role) if item[1] != _DATA)
        if role != _SCHEMA or not isinstance(node, dict):
            continue
        for keyword in ("anyOf", "oneOf"):
            alternatives = node.get(keyword)
            if isinstance(alternatives, list):
                found = width(alternatives)
                if found > limits.max_alternatives:
                    raise _over(
                        subject,
                        f"number of {keyword} alternatives (nested ones counted)",
                        found,
                        limits.max_alternatives,
                    )


# ---------------------------------------------------------------------------------------------------- regexes

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


def _bound(digits: str) -> int:
    return int(digits) if len(digits) <= 12 else 10**12


class _RepeatMeter:
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
            raise _over(self.subject, f"repetition bound of {text}", bound, self.limits.max_repeat)
        if self.last:
            product = self.last * max(bound, 1)
            if product > self.limits.max_nested_repeat:
                raise _over(
                    self.subject,
                    "product of nested repetition bounds",
                    product,
                    self.limits.max_nested_repeat,
                )
            self.frames[-1] = max(self.frames[-1], product)
            self.last = product


def check_regex(regex: str, limits: GrammarLimits = DEFAULT_LIMITS, subject: str = "regex") -> None:
    """Repetition bounds of a regex: each {n,m} and the product of nested ones ("((a|aa){100}){100}")."""
    meter = _RepeatMeter(subject, limits)
    for match in _REGEX_TOKEN.finditer(regex):
        kind = match.lastgroup
        if kind == "open":
            meter.open()
        elif kind == "close":
            meter.close()
        elif kind == "counted":
            high = match.group("high")
            low = _bound(match.group("low"))
            meter.repeat(low, _bound(high) if high else None, match.group("counted"))
        elif kind == "quantifier":
            pass  # * + ? multiply by one: unbounded repetition is not unrolled
        elif kind == "other" and match.group() == "|":
            meter.separator()
        elif kind != "inline_flags":
            meter.atom()


# ---------------------------------------------------------------------------------------------------- grammars

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
    meter = _RepeatMeter(subject, limits)
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
                meter = _RepeatMeter(subject, limits)
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
        raise _over(subject, "number of rules", len(rules), limits.max_rules)
    # A terminal's (upper-case rule's) alternatives are one regex; a rule's are parser items of one step.
    widest = max(
        (r for r in rules.values() if not r.name.isupper()), key=lambda r: r.alternatives, default=None
    )
    if widest is not None and widest.alternatives > limits.max_rule_alternatives:
        measure = f"number of alternatives of rule {widest.name!r}"
        raise _over(subject, measure, widest.alternatives, limits.max_rule_alternatives)
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
    low = _bound(tokens[at][1])
    at += 1
    high: int | None = None
    if at + 1 < len(tokens) and tokens[at][0] == "range" and tokens[at + 1][0] == "number":
        high = _bound(tokens[at + 1][1])
        at += 2
    if paren and at < len(tokens) and tokens[at] == ("other", ")"):
        at += 1
    return low, high, at


def _brace_bounds(tokens: list[tuple[str, str]], index: int) -> tuple[int | None, int | None, int]:
    """After `{` (tokens[index - 1]): `n}`, `n,}` or `n,m}`."""
    if index >= len(tokens) or tokens[index][0] != "number":
        return None, None, index
    low = _bound(tokens[index][1])
    at = index + 1
    high: int | None = None
    if at < len(tokens) and tokens[at] == ("other", ","):
        at += 1
        if at < len(tokens) and tokens[at][0] == "number":
            high = _bound(tokens[at][1])
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
        raise _over(subject, "length of a chain of rule references", chain, limits.max_rule_chain)


# ---------------------------------------------------------------------------------------------------- choices


def check_choices(source: str, limits: GrammarLimits = DEFAULT_LIMITS) -> None:
    size = len(source.encode("utf-8", errors="replace"))
    if size > limits.max_choice_bytes:
        raise _over("choice list", "size in bytes", size, limits.max_choice_bytes)
    options = parse_json(source, "choice list", limits)
    if isinstance(options, list) and len(options) > limits.max_choices:
        raise _over("choice list", "number of choices", len(options), limits.max_choices)
