"""Turning API inputs into prompt token ids: text, token ids and chat messages through the model's template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ember.chat.template import ChatTemplate, ChatTemplateError
from ember.server.common.errors import invalid_request

if TYPE_CHECKING:
    from ember.models.tokenizer import Tokenizer


def check_encodable(text: str, param: str) -> None:
    """JSON may carry lone surrogates (\\ud800) that are not Unicode text; refuse them with a 400."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise invalid_request(
            f"{param} is not valid Unicode text (lone surrogate at {error.start})", param=param
        ) from None


def check_token_ids(token_ids: Sequence[int], vocab_size: int, param: str) -> list[int]:
    if not token_ids:
        raise invalid_request(f"{param} must not be empty", param=param)
    # min and max loop in C: a Python loop over 1M ids would compete for the GIL with the event loop.
    if min(token_ids) < 0 or max(token_ids) >= vocab_size:
        bad = next(t for t in token_ids if not 0 <= t < vocab_size)
        raise invalid_request(
            f"{param}: token id {bad} is outside the vocabulary [0, {vocab_size})", param=param
        )
    return list(token_ids)


class PromptEncoder:
    """Encodes the inputs of one served model; the chat template is compiled once, at start-up."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, chat_template: str | None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.template: ChatTemplate | None = None
        if chat_template is not None:
            self.template = ChatTemplate(
                chat_template, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or ""
            )

    def encode_text(self, text: str, param: str, *, add_special_tokens: bool = True) -> list[int]:
        check_encodable(text, param)
        if not text:
            raise invalid_request(f"{param} must not be empty", param=param)
        return check_token_ids(
            self.tokenizer.encode(text, add_special_tokens=add_special_tokens), self.vocab_size, param
        )

    def encode(self, prompt: str | list[int], param: str) -> list[int]:
        if isinstance(prompt, str):
            return self.encode_text(prompt, param)
        return check_token_ids(prompt, self.vocab_size, param)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text; `tools` (OpenAI function tools) reach the template as its `tools` variable."""
        if self.template is None:
            raise invalid_request(
                "this model has no chat template; use /v1/completions with a plain prompt", param="messages"
            )
        for i, message in enumerate(messages):
            check_encodable(str(message.get("content") or ""), f"messages[{i}].content")
        kwargs = dict(template_kwargs or {})
        for reserved in ("messages", "tools", "add_generation_prompt"):
            kwargs.pop(reserved, None)
        try:
            return self.template.render(
                messages, add_generation_prompt=add_generation_prompt, tools=tools or None, **kwargs
            )
        except ChatTemplateError as error:
            raise invalid_request(str(error), param="messages") from None

    @property
    def template_source(self) -> str | None:
        return None if self.template is None else self.template.source

    def encode_chat(self, text: str) -> list[int]:
        """Token ids of a rendered chat: the template already placed every special token."""
        return check_token_ids(
            self.tokenizer.encode(text, add_special_tokens=False), self.vocab_size, "messages"
        )
