"""From a StructuredSpec to a validated llguidance grammar.

Why llguidance (1.9.1) and not xgrammar (0.2.8), measured on SmolLM2's 49,152-token vocabulary, one thread:
- per-token mask: llguidance 0.08 ms mean (0.65 ms max, first step) vs xgrammar 0.13 ms mean (5.2 ms max)
  on a nested schema with enums, bounded integers, a pattern and an array;
- compiling a schema: llguidance ~1 ms vs xgrammar ~195 ms, which matters when every request brings its own
  schema (100 varied schemas cost 0.1 s instead of 20 s);
- dependencies: llguidance has none; xgrammar requires transformers and triton at run time, and ember never
  imports transformers outside tests;
- coverage: both do nested objects, arrays, enums, const, required, numeric bounds, string lengths and
  patterns, anyOf/oneOf, $ref and GBNF; llguidance also gives regex, choice and Lark grammars that embed JSON
  schemas (`%json {...}`), which the tool-call grammars use.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import any_to_lark

from ember.structured.grammar_check import trial_steps
from ember.structured.grammar_limits import check_spec_limits
from ember.structured.grammar_worker import verify_grammar
from ember.structured.lark_limits import check_lark
from ember.structured.limits import DEFAULT_LIMITS, parse_json
from ember.structured.spec import ReasoningSection, StructuredSpec

# No free whitespace inside JSON: a small model given the choice can emit newlines until max_tokens. These are
# json.dumps' default separators, the spacing models see most in training.
JSON_FORMAT_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def grammar_for(spec: StructuredSpec, tokenizer: llguidance.LLTokenizer | None = None) -> str:
    """The llguidance grammar of `spec`; ValueError naming the problem when the schema or grammar is invalid,
    or bigger than ember compiles (grammar_limits: the message names the limit).

    Safe on untrusted input: measured first, then compiled under llguidance's limits in a worker process
    (grammar_worker: a crash there is this ValueError) with its first steps tried, verdicts cached. With a
    tokenizer the check also covers token-level problems (e.g. a special token the vocabulary lacks) and the
    first steps on the model's own vocabulary. Takes up to ~1 s for the largest grammars accepted (5 s at
    most): call it off the event loop.
    """
    check_spec_limits(spec)
    grammar = _raw_grammar(spec)
    if spec.reasoning is not None:
        grammar = _after_reasoning(grammar, spec.reasoning)
    error = verify_grammar(grammar)
    if error is None and tokenizer is not None:
        error = trial_steps(grammar, tokenizer)
    if error:
        raise ValueError(f"invalid {_describe(spec.kind)}: {error}")
    return grammar


def _raw_grammar(spec: StructuredSpec) -> str:
    match spec.kind:
        case "json_schema":
            schema = parse_schema(spec.source)
            options = dict(JSON_FORMAT_OPTIONS, lenient=not spec.strict)
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=options)
        case "gbnf":
            try:
                lark = any_to_lark(spec.source)  # a Lark grammar comes back as it is
            except Exception as error:  # noqa: BLE001 - the converter raises its own error types
                message = f"Failed to convert the grammar from GBNF to Lark: {error}"
                raise ValueError(f"invalid grammar: {message}") from None
            check_lark(lark, DEFAULT_LIMITS)
            return llguidance.LLMatcher.grammar_from_lark(lark)
        case "lark":
            return llguidance.LLMatcher.grammar_from_lark(spec.source)
        case "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec.source)
        case "choice":
            # One lexeme (an upper-case rule): the lexer matches it as one regex. As alternatives of a parser
            # rule, 2000 choices or more fail at the first token (llguidance's 2000-item limit per step).
            options = _parse_choices(spec.source)
            lark = "start: CHOICE\nCHOICE: " + " | ".join(
                json.dumps(option, ensure_ascii=False) for option in options
            )
            return llguidance.LLMatcher.grammar_from_lark(lark)
    raise ValueError(f"unknown structured output kind {spec.kind!r}")


def _after_reasoning(grammar: str, reasoning: ReasoningSection) -> str:
    """A grammar of: optional reasoning (mandatory when the prompt opened it), then `grammar`.

    The reasoning is a lazy rule that ends at the first end tag, so it may contain anything else."""
    inner = (
        json.loads(grammar) if grammar.lstrip().startswith("{") else {"grammars": [{"lark_grammar": grammar}]}
    )
    sub_grammars = inner["grammars"]
    sub_grammars[0]["name"] = "constrained"
    section = f"{json.dumps(reasoning.start_tag)} think" if not reasoning.opened else "think"
    section = f"({section} /[ \\t\\r\\n]*/)" + ("" if reasoning.opened else "?")
    lark = f"start: {section} @constrained\nthink[stop={json.dumps(reasoning.end_tag)}]: /(.|\\n)*/\n"
    return json.dumps({"grammars": [{"lark_grammar": lark}, *sub_grammars]})


def parse_schema(source: str) -> dict[str, Any] | bool:
    schema = parse_json(source, "JSON schema")
    if not isinstance(schema, dict | bool):
        raise ValueError(f"invalid JSON schema: expected an object, got {type(schema).__name__}")
    return schema


def _parse_choices(source: str) -> list[str]:
    options = parse_json(source, "choice list")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o for o in options):
        raise ValueError("invalid choice list: expected a non-empty list of non-empty strings")
    return options


def _describe(kind: str) -> str:
    return {
        "json_schema": "JSON schema",
        "gbnf": "grammar",
        "lark": "grammar",
        "regex": "regex",
        "choice": "choice list",
    }[kind]
