"""From a chat request's tools, tool_choice, reasoning_effort and response_format to the prompt (text and token
ids), the output constraint and the parsers that read the reply back. Shared by /v1/chat/completions and
/v1/messages (which translates Anthropic's shapes into these first). Every invalid input is a ChatRequestError
naming its parameter (the server's 400); the encoder's own errors pass through."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ember.chat.continuation import ContinuationError, continued_prompt
from ember.chat.generic_tools import generic_messages, tools_instruction, with_instruction
from ember.chat.reasoning import ReasoningParser, template_switches
from ember.chat.reasoning import parser_for_template as reasoning_parser_for_template
from ember.chat.reply import ReplyReader
from ember.chat.tool_parsers import ToolParser, messages_for_template, new_tool_call_id, syntax_for_template
from ember.structured import (
    GENERIC,
    MISTRAL,
    FunctionTool,
    ReasoningSection,
    StructuredSpec,
    ToolCallSyntax,
    forced_tools,
    lazy_spec_for_tools,
    parse_tools,
    response_format_message,
    spec_for_tool_choice,
    spec_from_response_format,
)
from ember.structured.grammar import JSON_FORMAT_OPTIONS, grammar_for

_WHITESPACE = " \t\r\n"


class ChatRequestError(ValueError):
    """A chat request that cannot be planned; `param` names the request parameter at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class ChatRenderer(Protocol):
    """What the plan needs of the served model's prompt encoder (ember.server.common.prompts.PromptEncoder)."""

    @property
    def template_source(self) -> str | None: ...

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> str: ...

    def encode_chat(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class ChatInputs:
    """A chat request in OpenAI's shapes (messages as the template receives them, before tool-call decoding)."""

    messages: list[dict[str, Any]]
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    reasoning_effort: str | bool | None = None
    response_format: Any = None
    template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool | None = None  # None: yes, unless the final message is continued
    continue_final_message: bool = False  # the reply carries on the final message's text (a prefill)
    generic_tools: bool = True  # a template without tool support gets ember's generic format, not a 400


@dataclass(frozen=True)
class ChatPlan:
    prompt: str
    prompt_token_ids: list[int]
    structured: StructuredSpec | None  # the output constraint; None: free text
    reader: ReplyReader
    stop: tuple[str, ...] = ()  # stop strings the plan adds to the request's own
    keep_special_tokens: bool = False  # the tool-call marker is a special token the parser must see


def plan_chat(
    encoder: ChatRenderer, inputs: ChatInputs, new_id: Callable[[], str] = new_tool_call_id
) -> ChatPlan:
    template = encoder.template_source
    tools = list(inputs.tools or [])
    # A chat with no tools and no past calls or results never enters the tool modules.
    uses_tools = bool(tools) or _has_tool_history(inputs.messages)
    if uses_tools or any("reasoning" in m for m in inputs.messages):
        messages = _prepared_messages(inputs.messages)
    else:
        messages = [dict(m) for m in inputs.messages]
    tool_choice = inputs.tool_choice if inputs.tool_choice is not None else ("auto" if tools else "none")
    parsed, forced = _forced(tools, tool_choice)
    syntax = _tool_syntax(template, tools, messages, inputs.generic_tools) if uses_tools else None
    parses_tools = bool(tools) and not _is_none(tool_choice)
    template_tools: list[Any] | None = tools or None
    if syntax == GENERIC and template is not None:  # the template never sees tools: ember writes them
        messages, template_tools = generic_messages(messages), None
        if parses_tools:
            instruction = tools_instruction(parsed, forced, inputs.parallel_tool_calls)
            messages = with_instruction(messages, instruction, template)
    try:
        switches = template_switches(inputs.reasoning_effort, template)
    except ValueError as error:
        raise ChatRequestError(str(error), "reasoning_effort") from None
    reasoning_parser = reasoning_parser_for_template(template)
    if reasoning_parser is None and not switches and _wants_reasoning(inputs.reasoning_effort):
        raise ChatRequestError(
            "reasoning_effort: this model's chat template has no thinking section or switch, so its "
            "reasoning cannot be turned on",
            "reasoning_effort",
        )
    kwargs = {**switches, **(inputs.template_kwargs or {})}
    prompt = _render(encoder, messages, inputs, kwargs, template_tools)
    reasoning_parser = reasoning_parser_for_template(template, prompt)
    section = _reasoning_section(reasoning_parser, prompt)
    if forced:
        assert syntax is not None
        structured = _tool_spec(tools, tool_choice, syntax, inputs.parallel_tool_calls, section)
    elif parses_tools and _constrains(inputs.response_format):
        assert syntax is not None
        structured = _tools_or_answer_spec(
            tools, syntax, inputs.parallel_tool_calls, inputs.response_format, section
        )
    elif parses_tools and syntax == GENERIC:
        structured = _lazy_tool_spec(tools, inputs.parallel_tool_calls, section)
    else:
        structured = _response_format_spec(inputs.response_format, section)
    stop: tuple[str, ...] = ()
    if parses_tools and not forced and not inputs.parallel_tool_calls and syntax is not None:
        # One call at most: the reply ends where the first call's closing tag would be.
        if syntax.call_suffix.strip():
            stop = (syntax.call_suffix.strip(),)
    reader = ReplyReader(reasoning_parser, ToolParser(syntax, new_id) if parses_tools else None)
    keep_special_tokens = parses_tools and syntax == MISTRAL
    ids = encoder.encode_chat(prompt)
    return ChatPlan(prompt, ids, structured, reader, stop, keep_special_tokens)


def _render(
    encoder: ChatRenderer,
    messages: list[dict[str, Any]],
    inputs: ChatInputs,
    template_kwargs: dict[str, Any],
    tools: list[Any] | None,
) -> str:
    if not inputs.continue_final_message:
        return encoder.render_chat(
            messages,
            add_generation_prompt=inputs.add_generation_prompt is not False,
            template_kwargs=template_kwargs,
            tools=tools,
        )
    if inputs.add_generation_prompt:
        raise ChatRequestError(
            "continue_final_message and add_generation_prompt cannot both be true: the reply either "
            "continues the final message or starts a new one",
            "continue_final_message",
        )
    try:
        return continued_prompt(
            messages,
            lambda shown: encoder.render_chat(
                shown, add_generation_prompt=False, template_kwargs=template_kwargs, tools=tools
            ),
        )
    except ContinuationError as error:
        raise ChatRequestError(str(error), "continue_final_message") from None


def _prepared_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        return messages_for_template(messages)
    except ValueError as error:
        message = str(error)
        raise ChatRequestError(message, message.split(" ", 1)[0]) from None


def _tool_syntax(
    template: str | None, tools: list[Any], messages: list[dict[str, Any]], generic: bool
) -> ToolCallSyntax | None:
    """The template's own tool format for a request with tools or a tool history; GENERIC when the template
    has none (unless the generic format is off)."""
    syntax = syntax_for_template(template)
    if syntax is not None and template is not None and "tools" in template:
        return syntax
    if template is None:
        return syntax  # no template at all: rendering refuses the chat with its own message
    if generic:
        return GENERIC
    if not tools:
        return syntax  # a tool history on a template without tools: rendered as the template does
    raise ChatRequestError(
        "tools: this model's chat template does not support tool calling (it neither renders a `tools` "
        "variable nor writes a known tool-call format: Hermes/Qwen <tool_call>, Llama-3 JSON, Mistral "
        "[TOOL_CALLS]), and ember's generic tool format is turned off (generic_tools false, or the server "
        "runs with --no-generic-tools); send the request without tools",
        "tools",
    )


def _has_tool_history(messages: list[dict[str, Any]]) -> bool:
    """Whether the conversation holds assistant tool calls or tool results."""
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def _forced(tools: list[Any], tool_choice: Any) -> tuple[list[FunctionTool], list[FunctionTool]]:
    """The tools, validated, and those tool_choice forces a call of (empty: the reply may be text)."""
    if not tools and _is_none(tool_choice):
        return [], []  # a plain chat: nothing to validate, and the tool machinery stays off its path
    try:
        parsed = parse_tools(tools)
    except ValueError as error:
        raise ChatRequestError(str(error), "tools") from None
    try:
        return parsed, forced_tools(parsed, tool_choice)
    except ValueError as error:
        raise ChatRequestError(str(error), "tool_choice") from None


def _is_none(tool_choice: Any) -> bool:
    """OpenAI's "none" or Anthropic's {"type": "none"}: the tools are shown, but the reply is text."""
    return tool_choice == "none" or (isinstance(tool_choice, dict) and tool_choice.get("type") == "none")


def _wants_reasoning(effort: str | bool | None) -> bool:
    return effort is not None and effort is not False and effort != "none"


def _reasoning_section(parser: ReasoningParser | None, prompt: str) -> ReasoningSection | None:
    """Where the constraint starts: after the reasoning, unless the prompt already closed it (thinking off)."""
    if parser is None or prompt.rstrip(_WHITESPACE).endswith(parser.end_tag):
        return None
    return ReasoningSection(parser.start_tag, parser.end_tag, opened=parser.starts_in_reasoning)


def _response_format_spec(
    response_format: Any, reasoning: ReasoningSection | None = None
) -> StructuredSpec | None:
    """The constraint of `response_format` (after `reasoning`, for thinking models), as the server's
    sampling.response_format_spec builds it for completions."""
    if response_format is None:
        return None  # plain text, decided here so a plain chat never enters the structured package
    try:
        return spec_from_response_format(response_format, reasoning)
    except ValueError as error:
        raise ChatRequestError(response_format_message(error), "response_format") from None


def _constrains(response_format: Any) -> bool:
    return response_format is not None and not (
        isinstance(response_format, dict) and response_format.get("type") == "text"
    )


def _tool_spec(
    tools: list[Any],
    tool_choice: Any,
    syntax: ToolCallSyntax,
    parallel: bool,
    section: ReasoningSection | None,
) -> StructuredSpec:
    try:
        spec = spec_for_tool_choice(tools, tool_choice, syntax, parallel, section)
    except ValueError as error:
        raise ChatRequestError(str(error), "tools") from None
    assert spec is not None
    return spec


def _lazy_tool_spec(tools: list[Any], parallel: bool, section: ReasoningSection | None) -> StructuredSpec:
    try:
        return lazy_spec_for_tools(tools, parallel, section)
    except ValueError as error:
        raise ChatRequestError(str(error), "tools") from None


def _tools_or_answer_spec(
    tools: list[Any],
    syntax: ToolCallSyntax,
    parallel: bool,
    response_format: Any,
    section: ReasoningSection | None,
) -> StructuredSpec:
    """tool_choice auto with a JSON response_format: either tool calls or an answer valid per the schema."""
    answer = _response_format_spec(response_format)
    if answer is None or answer.kind != "json_schema":
        kind = response_format.get("type") if isinstance(response_format, dict) else response_format
        raise ChatRequestError(
            f"response_format of type {kind!r} cannot be combined with tools and tool_choice 'auto'; "
            "use json_object or json_schema, or tool_choice 'none' or 'required'",
            "response_format",
        )
    calls = _tool_spec(tools, "required", syntax, parallel, None)
    schema = json.loads(answer.source)
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise ChatRequestError("response_format: the schema accepts nothing", "response_format")
    schema["x-guidance"] = dict(JSON_FORMAT_OPTIONS, lenient=not answer.strict)
    lark = calls.source.replace("start:", "tool_calls:", 1) + (
        f"start: tool_calls | answer\nanswer: %json {json.dumps(schema)}\n"
    )
    spec = StructuredSpec("lark", lark, reasoning=section)
    try:
        grammar_for(spec)
    except ValueError as error:
        raise ChatRequestError(f"response_format with tools: {error}", "response_format") from None
    return spec
