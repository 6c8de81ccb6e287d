"""Structured output: JSON / JSON-schema / grammar / regex / choice constraints enforced by token masks."""

from __future__ import annotations

from ember.structured.response_format import response_format_message, spec_from_response_format
from ember.structured.spec import ReasoningSection, StructuredSpec
from ember.structured.tools import (
    GENERIC,
    GENERIC_TRIGGER,
    HERMES,
    LLAMA3_JSON,
    MISTRAL,
    FunctionTool,
    ToolCallSyntax,
    forced_tools,
    lazy_spec_for_tools,
    parse_tools,
    spec_for_tool_choice,
)

__all__ = [
    "GENERIC",
    "GENERIC_TRIGGER",
    "HERMES",
    "LLAMA3_JSON",
    "MISTRAL",
    "FunctionTool",
    "ReasoningSection",
    "StructuredSpec",
    "ToolCallSyntax",
    "forced_tools",
    "lazy_spec_for_tools",
    "parse_tools",
    "response_format_message",
    "spec_for_tool_choice",
    "spec_from_response_format",
]
