"""Incremental detokenization: turn a growing list of token ids into text deltas without splitting characters.

Byte-level tokenizers split many characters (emoji, CJK) over several tokens; decoding such a prefix yields
U+FFFD. The decoder therefore keeps two offsets into the ids (the prefix/read-offset scheme of vLLM and TGI):
it decodes a short window that starts a few tokens back, and emits only the text beyond the window's already
emitted part, once that text no longer ends in an incomplete character.
"""

from __future__ import annotations

from typing import Protocol

_REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool) -> str: ...


class IncrementalDetokenizer:
    """Text of one generated sequence, handed out as deltas.

    The last few prompt tokens give the first output tokens their context (tokenizers that drop a leading
    space at the start of a decode would otherwise lose it). For byte-level tokenizers the deltas concatenate
    to tokenizer.decode(output ids) exactly, once flush() has released what is held at the end.
    """

    # Prompt tokens decoded in front of the output: enough for leading-space context, few enough to be cheap.
    PROMPT_CONTEXT_TOKENS = 5

    def __init__(
        self, tokenizer: Decoder, prompt_token_ids: list[int], skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-self.PROMPT_CONTEXT_TOKENS :])
        self._ids: list[int] = context  # the context tail, then every output token
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = len(context)  # ids before this are already reflected in the emitted text
        self._text = ""

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return self._text

    def add_tokens(self, token_ids: list[int]) -> str:
        """Append generated tokens; return the text that is now complete (possibly empty)."""
        self._ids.extend(token_ids)
        prefix_text, window_text = self._decode_window()
        if len(window_text) <= len(prefix_text) or window_text.endswith(_REPLACEMENT_CHAR):
            # Nothing new yet, or the last character's bytes are still arriving: hold it back.
            return ""
        return self._emit(window_text[len(prefix_text) :])

    def flush(self) -> str:
        """Release everything held back (an unfinished character decodes as U+FFFD); call at the end."""
        prefix_text, window_text = self._decode_window()
        if len(window_text) <= len(prefix_text):
            return ""
        return self._emit(window_text[len(prefix_text) :])

    def _decode_window(self) -> tuple[str, str]:
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], self._skip_special_tokens)
        window_text = decode(self._ids[self._prefix_offset :], self._skip_special_tokens)
        return prefix_text, window_text

    def _emit(self, delta: str) -> str:
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._text += delta
        return delta
