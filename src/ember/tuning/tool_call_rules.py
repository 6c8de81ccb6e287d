"""The checks on the function-calling parts of an SFT row: its tool definitions (`tools`) and each tool call.

Both follow OpenAI's function-calling format; a call may only name a function the row's `tools` define.
"""

from __future__ import annotations

import json
from typing import Any

from ember.tuning.dataset_report import Problem
from ember.tuning.json_wording import json_type, shown_json


def check_tools(row: dict[str, Any], line: int, problems: list[Problem]) -> set[str] | None:
    """Validate `tools`; return the declared function names (None when the list itself is unusable)."""
    tools = row["tools"]
    if not isinstance(tools, list):
        problems.append(
            Problem(line, None, "invalid_tools", "'tools' must be a list of function definitions")
        )
        return None
    names: set[str] = set()
    for k, tool in enumerate(tools):
        where = f"tools[{k}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            problems.append(
                Problem(
                    line,
                    None,
                    "invalid_tool_definition",
                    f'{where} must be {{"type": "function", "function": {{...}}}}',
                )
            )
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name:
            problems.append(
                Problem(
                    line, None, "invalid_tool_definition", f"{where}.function.name must be a non-empty string"
                )
            )
            continue
        if name in names:
            problems.append(
                Problem(line, None, "invalid_tool_definition", f"{where} defines {name!r} a second time")
            )
        names.add(name)
        schema_error = _schema_error(function.get("parameters")) if "parameters" in function else None
        if schema_error is not None:
            problems.append(
                Problem(line, None, "invalid_tool_definition", f"{where}.function.parameters {schema_error}")
            )
    return names


def _schema_error(schema: Any) -> str | None:
    """Why `parameters` is not a JSON schema of an object (None when it is)."""
    if not isinstance(schema, dict):
        return f"must be a JSON schema object, got {json_type(schema)}"
    if "type" in schema and schema["type"] != "object":
        return f"must describe an object (type 'object'), got type {shown_json(schema['type'])}"
    if "properties" in schema and not isinstance(schema["properties"], dict):
        return "has 'properties' that is not an object"
    if "required" in schema and not (
        isinstance(schema["required"], list) and all(isinstance(r, str) for r in schema["required"])
    ):
        return "has 'required' that is not a list of strings"
    return None


def tool_call_error(call: Any, tool_names: set[str] | None) -> str | None:
    """What is wrong with one tool call, as a suffix to `tool_calls[j]` (None when it is well-formed)."""
    if not isinstance(call, dict):
        return f" must be an object, got {json_type(call)}"
    if not isinstance(call.get("id"), str) or not call["id"]:
        return ".id must be a non-empty string"
    if call.get("type") != "function":
        return f".type must be 'function', got {shown_json(call.get('type'))}"
    function = call.get("function")
    if not isinstance(function, dict):
        return ".function must be an object with name and arguments"
    name = function.get("name")
    if not isinstance(name, str) or not name:
        return ".function.name must be a non-empty string"
    if tool_names is not None and name not in tool_names:
        return f".function.name {name!r} is not one of the row's tools"
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        return f".function.arguments must be a JSON-encoded string, got {json_type(arguments)}"
    try:
        json.loads(arguments)
    except json.JSONDecodeError as error:
        return f".function.arguments is not valid JSON ({error.msg} at column {error.colno})"
    except RecursionError:
        return ".function.arguments is nested too deeply"
    return None
