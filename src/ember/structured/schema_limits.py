"""JSON schemas measured before compiling: nesting (also through $refs), $ref chains, alternatives, sizes.

Iterative and linear in the input, so measuring cannot itself fail on a hostile schema."""

from __future__ import annotations

from typing import Any

from ember.structured.limits import DEFAULT_LIMITS, GrammarLimits, check_json_depth, over_limit
from ember.structured.regex_limits import check_regex

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
        raise over_limit(subject, "number of enum values", len(enum), limits.max_enum)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) > limits.max_all_of:
        raise over_limit(subject, "number of allOf subschemas", len(all_of), limits.max_all_of)
    properties = node.get("properties")
    if isinstance(properties, dict):
        if len(properties) > limits.max_properties:
            raise over_limit(
                subject, "number of properties of one object", len(properties), limits.max_properties
            )
        required = node.get("required")
        required_names = (
            set(required)
            if isinstance(required, list) and all(isinstance(r, str) for r in required)
            else set()
        )
        optional = sum(1 for name in properties if name not in required_names)
        if optional > limits.max_optional_properties:
            raise over_limit(
                subject,
                "number of optional properties of one object",
                optional,
                limits.max_optional_properties,
            )
    for keyword in _SIZE_KEYWORDS:
        bound = node.get(keyword)
        if isinstance(bound, int | float) and not isinstance(bound, bool) and bound > limits.max_size_bound:
            raise over_limit(subject, keyword, _as_int(bound), limits.max_size_bound)
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
        raise over_limit(subject, "length of a $ref chain", hops, limits.max_ref_chain)
    if depth + 1 > limits.max_depth_through_refs:
        raise over_limit(subject, "nesting depth through $refs", depth + 1, limits.max_depth_through_refs)


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
                    raise over_limit(
                        subject,
                        f"number of {keyword} alternatives (nested ones counted)",
                        found,
                        limits.max_alternatives,
                    )
