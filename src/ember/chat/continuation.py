"""Continuing the final message in place (vLLM's continue_final_message, Anthropic's assistant prefill): the
prompt is the rendered conversation cut right after the final message's text, so it ends without the
end-of-turn the template would write there, and the model's reply carries on the same text.

Where the text ends is found with a sentinel appended to it before rendering, not by searching the rendered
prompt for the text (vLLM's and transformers' way): the sentinel stays correct when the same text appears
twice, when the message is empty, and when the template trims the text's trailing whitespace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_SENTINEL = "\ue000ember-continue\ue000"


class ContinuationError(ValueError):
    """The final message cannot be continued."""


def continued_prompt(messages: list[dict[str, Any]], render: Callable[[list[dict[str, Any]]], str]) -> str:
    """The prompt that continues messages[-1]: `render` (the template without a generation prompt) applied
    to the conversation with a sentinel after the last message's text, cut at the sentinel."""
    if not messages:
        raise ContinuationError("continue_final_message needs at least one message")
    final = dict(messages[-1])
    content = final.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ContinuationError("continue_final_message: the final message's content must be text")
    if _SENTINEL in content:
        raise ContinuationError("continue_final_message: the final message holds a reserved character")
    final["content"] = content + _SENTINEL
    rendered = render([*messages[:-1], final])
    cut = rendered.rfind(_SENTINEL)
    if cut < 0 or _SENTINEL in rendered[:cut]:
        raise ContinuationError(
            "continue_final_message: this chat template does not render the final message's text as it is "
            "(exactly once, at its end), so the message cannot be continued"
        )
    return rendered[:cut]
