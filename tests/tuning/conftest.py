"""Shared pieces of the tuning tests: JSONL writing and a real ChatML token counter over SmolLM2's tokenizer
(the session's `smollm_tokenizer`, tests/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from tuning_helpers import DEFAULT_SYSTEM


@pytest.fixture(scope="session")
def chatml_counter(smollm_tokenizer: Any) -> Callable[[dict[str, Any]], tuple[int, int]]:
    """count_tokens(row) -> (total, trainable) for SmolLM2's ChatML template.

    Trainable tokens are each trained assistant message's content plus its <|im_end|>, as the trainer will
    mask them; the system prompt the template adds when a row has none is counted in the total.
    """

    def encode(text: str) -> list[int]:
        return smollm_tokenizer(text, add_special_tokens=False).input_ids

    def text_of(message: dict[str, Any]) -> str:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part["text"] for part in content if part["type"] == "text")
        if message.get("reasoning_content"):
            content = f"<think>{message['reasoning_content']}</think>{content}"
        for call in message.get("tool_calls") or []:
            content += f"<tool_call>{json.dumps(call['function'])}</tool_call>"
        return content

    def count(row: dict[str, Any]) -> tuple[int, int]:
        messages = row["messages"]
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
        rendered = ""
        trainable = 0
        for message in messages:
            header = f"<|im_start|>{message['role']}\n"
            body = text_of(message) + "<|im_end|>"
            rendered += header + body + "\n"
            if message["role"] == "assistant" and message.get("weight", 1) == 1:
                trainable += len(encode(body))
        return len(encode(rendered)), trainable

    return count
