"""How big and how deep an untrusted schema or grammar may be, measured before llguidance sees it.

llguidance crashes (SIGSEGV: stack overflow in its recursive compiler), panics or gives up part-way through
generation on inputs past some size; every limit here sits well inside what it handles in well under a
second, and well above what real schemas and grammars use. docs/decisions.md ("Untrusted grammars") has the
measured thresholds. Every violation is a ValueError naming the limit and the value found.

Everything here is iterative (no Python recursion) and linear in the input, so measuring cannot itself fail
on a hostile input.
"""

from __future__ import annotations

from ember.structured.lark_limits import check_lark
from ember.structured.limits import DEFAULT_LIMITS, GrammarLimits, over_limit, parse_json
from ember.structured.regex_limits import check_regex
from ember.structured.schema_limits import check_schema
from ember.structured.spec import StructuredSpec


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
        raise over_limit(subject, "size in bytes", size, limits.max_source_bytes)
    match spec.kind:
        case "json_schema":
            check_schema(parse_json(spec.source, "JSON schema", limits), limits)
        case "regex":
            check_regex(spec.source, limits, "regex")
        case "gbnf":
            rules = spec.source.count("::=")
            if rules > limits.max_rules:
                raise over_limit("grammar", "number of rules", rules, limits.max_rules)
            # The text is converted to Lark (llguidance's gbnf_to_lark) before it is compiled; grammar.py
            # measures the converted grammar with check_lark.
        case "lark":
            check_lark(spec.source, limits)


def check_choices(source: str, limits: GrammarLimits = DEFAULT_LIMITS) -> None:
    size = len(source.encode("utf-8", errors="replace"))
    if size > limits.max_choice_bytes:
        raise over_limit("choice list", "size in bytes", size, limits.max_choice_bytes)
    options = parse_json(source, "choice list", limits)
    if isinstance(options, list) and len(options) > limits.max_choices:
        raise over_limit("choice list", "number of choices", len(options), limits.max_choices)
