"""The other spellings of an output constraint, as the `response_format` object ember already enforces: vLLM's
`guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` and `structured_outputs`, llama.cpp's top-level
`grammar` / `json_schema`, Anthropic's `output_config.format`. A request that sets two different constraints is
refused naming both; the same constraint twice is one constraint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ember.structured.response_format import spec_from_response_format

# vLLM's structured_outputs: the one constraint it carries, and its options (what ember does with each).
_STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object")
# disable_fallback: ember has one backend, nothing to fall back to; disable_any_whitespace: ember's JSON never
# has free whitespace; both honoured whatever their value. The others ask for something ember does not do.
_STRUCTURED_OUTPUT_OPTIONS_ANY = ("disable_fallback", "disable_any_whitespace")
_STRUCTURED_OUTPUT_OPTIONS_OFF = {
    "disable_additional_properties": False,
    "whitespace_pattern": None,
    "structural_tag": None,
}
# Where spec_from_response_format's messages name the value each spelling carries.
_VALUE_PATHS = {
    "json_schema": "response_format.json_schema.schema",
    "regex": "response_format.regex",
    "choice": "response_format.choices",
    "grammar": "response_format.grammar",
    "json_object": "response_format",
}


class ConstraintFieldError(ValueError):
    """A constraint field that cannot be used; `param` names it (the API's 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class RequestedConstraint:
    """The request's one output constraint: the field that set it and the same thing as a response_format."""

    param: str  # "response_format", "guided_json", "structured_outputs.regex", "output_config.format", ...
    response_format: dict[str, Any]
    kind: str  # a response_format type: json_schema, json_object, regex, choice, grammar


def requested_constraint(fields: Mapping[str, Any]) -> RequestedConstraint | None:
    """The constraint of the fields a request sent (name -> value; None values left out); None: free text.
    ConstraintFieldError for a malformed value or two different constraints."""
    found: list[RequestedConstraint] = []
    for name, value in fields.items():
        constraint = _constraint_of(name, value)
        if constraint is None:
            continue
        for earlier in found:
            if earlier.response_format != constraint.response_format:
                raise ConstraintFieldError(
                    f"{earlier.param} and {constraint.param} both constrain the output, differently; "
                    "send one of them",
                    constraint.param,
                )
        if not found:
            found.append(constraint)
    return found[0] if found else None


def check_constraint(constraint: RequestedConstraint) -> None:
    """Compiles the constraint once (off the event loop: a grammar can take a second), so that a bad schema,
    regex or grammar is refused naming the field the client used. Verdicts are cached, so the request's own
    compilation afterwards is free."""
    try:
        spec_from_response_format(constraint.response_format)
    except ValueError as error:
        raise ConstraintFieldError(constraint_message(constraint, str(error)), constraint.param) from None


def constraint_message(constraint: RequestedConstraint, message: str) -> str:
    """A refusal of the response_format path, worded with the field the client sent."""
    if constraint.param == "response_format":
        return message if message.startswith("response_format") else f"response_format: {message}"
    path = _VALUE_PATHS[constraint.kind]
    if message.startswith(path):
        return constraint.param + message[len(path) :]
    if message.startswith("response_format"):
        return constraint.param + message[len("response_format") :]
    return f"{constraint.param}: {message}"


def _constraint_of(name: str, value: Any) -> RequestedConstraint | None:
    match name:
        case "response_format":
            if isinstance(value, dict) and value.get("type") in (None, "text") and len(value) <= 1:
                return None  # text: no constraint (a malformed one is refused by the response_format path)
            kind = value.get("type") if isinstance(value, dict) else "json_object"
            return RequestedConstraint(name, value, kind if isinstance(kind, str) else "json_object")
        case "guided_json" | "json_schema":
            return _json_schema(name, value)
        case "guided_regex":
            return _text(name, "regex", value)
        case "guided_choice":
            return _choice(name, value)
        case "guided_grammar" | "grammar":
            return _text(name, "grammar", value)
        case "structured_outputs":
            return _structured_outputs(value)
        case "output_config.format" | "output_format":
            return _anthropic_format(name, value)
    raise ValueError(f"{name} is not an output-constraint field")


def _json_schema(name: str, schema: Any) -> RequestedConstraint:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as error:
            raise ConstraintFieldError(f"{name} is not valid JSON: {error.msg}", name) from None
        except RecursionError:
            raise ConstraintFieldError(f"{name} nests too deeply", name) from None
    if not isinstance(schema, dict | bool):
        raise ConstraintFieldError(f"{name} must be a JSON schema object", name)
    response_format = {"type": "json_schema", "json_schema": {"schema": schema}}
    return RequestedConstraint(name, response_format, "json_schema")


def _text(name: str, kind: str, value: Any) -> RequestedConstraint:
    if not isinstance(value, str) or not value.strip():
        raise ConstraintFieldError(f"{name} must be a non-empty string", name)
    return RequestedConstraint(name, {"type": kind, kind: value}, kind)


def _choice(name: str, value: Any) -> RequestedConstraint:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise ConstraintFieldError(f"{name} must be a non-empty list of non-empty strings", name)
    return RequestedConstraint(name, {"type": "choice", "choices": list(value)}, "choice")


def _structured_outputs(value: Any) -> RequestedConstraint | None:
    if not isinstance(value, dict):
        raise ConstraintFieldError("structured_outputs must be an object", "structured_outputs")
    for key, option in value.items():
        where = f"structured_outputs.{key}"
        if key in _STRUCTURED_OUTPUT_KINDS or key in _STRUCTURED_OUTPUT_OPTIONS_ANY:
            continue
        if key in _STRUCTURED_OUTPUT_OPTIONS_OFF:
            if option != _STRUCTURED_OUTPUT_OPTIONS_OFF[key]:
                raise ConstraintFieldError(f"{where} is not supported by this server; leave it out", where)
            continue
        raise ConstraintFieldError(
            f"{where} is not a structured_outputs field; expected one of "
            f"{', '.join(_STRUCTURED_OUTPUT_KINDS)}",
            where,
        )
    kinds = [k for k in _STRUCTURED_OUTPUT_KINDS if value.get(k) not in (None, False)]
    if len(kinds) > 1:
        raise ConstraintFieldError(
            f"structured_outputs.{kinds[0]} and structured_outputs.{kinds[1]} both constrain the output; "
            "send one of them",
            f"structured_outputs.{kinds[1]}",
        )
    if not kinds:
        return None
    kind, inner = kinds[0], value[kinds[0]]
    where = f"structured_outputs.{kind}"
    match kind:
        case "json":
            return _json_schema(where, inner)
        case "regex":
            return _text(where, "regex", inner)
        case "choice":
            return _choice(where, inner)
        case "grammar":
            return _text(where, "grammar", inner)
    if inner is not True:
        raise ConstraintFieldError(f"{where} must be true or left out", where)
    return RequestedConstraint(where, {"type": "json_object"}, "json_object")


def _anthropic_format(where: str, value: Any) -> RequestedConstraint:
    """Anthropic's {"type": "json_schema", "schema": {...}} (output_config.format, and output_format of the
    structured-outputs beta): the reply is JSON valid against the schema, and schema keywords that cannot be
    enforced are refused rather than skipped (strict), as Anthropic promises."""
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        raise ConstraintFieldError(f'{where}.type must be "json_schema"', f"{where}.type")
    schema = value.get("schema")
    if not isinstance(schema, dict):
        raise ConstraintFieldError(f"{where}.schema must be a JSON schema object", f"{where}.schema")
    response_format = {"type": "json_schema", "json_schema": {"schema": schema, "strict": True}}
    return RequestedConstraint(where, response_format, "json_schema")
