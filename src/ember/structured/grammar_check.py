"""Compile one llguidance grammar under llguidance's own limits and try its first steps; errors made short.

Used in the server process for small grammars and in the grammar worker (grammar_worker.py) for the rest.
Imports nothing heavier than llguidance, so the worker starts quickly.
"""

from __future__ import annotations

import functools
import re

import llguidance

# llguidance's defaults (ParserLimits in its Rust source), spelled out so they are visible and fixed here:
# a step may create at most 2000 Earley items in one row and 50,000 in all, the lexer may spend 1,000,000
# fuel (~20 ms) building a regex and 200,000 (~15 ms) per mask. Errors stay short (verbose_errors=False: no
# parser state or grammar text in them).
PARSER_LIMITS_ARGS: dict[str, int | bool] = {
    "max_items_in_row": 2000,
    "initial_lexer_fuel": 1_000_000,
    "step_lexer_fuel": 200_000,
    "step_max_items": 50_000,
    "max_lexer_states": 250_000,
    "max_grammar_size": 500_000,
    "verbose_errors": False,
}

# Steps of generation tried on a byte-level vocabulary: llguidance builds the lexer and parser state of the
# first steps lazily, and a grammar past its limits (a regex with 10^6 repetitions, a rule with 3000
# alternatives) passes validate_grammar, then fails here, at the first token, instead of mid-stream.
TRIAL_STEPS = 4

_MAX_LINE = 200
_MAX_LINES = 8
_MAX_MESSAGE = 1000


def parser_limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(**PARSER_LIMITS_ARGS)


def clean_message(message: str) -> str:
    """An llguidance error fit for an API response: no Rust backtrace, no parser dump, bounded length.

    A panic keeps its first line only; other messages keep their first lines (a caret under the error),
    each cut to 200 characters."""
    message = message.strip()
    for marker in ("<backtrace>", "stack backtrace:", "\n<state>", "Backtrace"):
        cut = message.find(marker)
        if cut >= 0:
            message = message[:cut].rstrip()
    lines = [line for line in message.splitlines() if line.strip() != "<non-verbose/>"] or [""]
    if lines[0].startswith("panic") or "panicked at" in lines[0]:
        lines = lines[:1]
    lines = [line if len(line) <= _MAX_LINE else line[:_MAX_LINE] + "..." for line in lines[:_MAX_LINES]]
    cleaned = "\n".join(lines)
    if len(cleaned) > _MAX_MESSAGE:
        cleaned = cleaned[:_MAX_MESSAGE] + "..."
    return cleaned or "unknown error"


class _ByteVocabulary:
    """256 one-byte tokens and an end-of-sequence token: the shape llguidance.TokenizerWrapper reads."""

    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
    special_token_ids = [256]
    eos_token_id = 256
    bos_token_id = None

    def __call__(self, text: bytes | str) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)


@functools.cache
def byte_tokenizer() -> llguidance.LLTokenizer:
    """Built once per process: it is immutable."""
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteVocabulary()), eos_token=[256])


# Errors of the trial that come from the byte vocabulary, not the grammar (it names special tokens the real
# vocabulary has): the check with the model's own tokenizer decides those.
_VOCABULARY_ERRORS = re.compile(r"special token|Token range|token id", re.IGNORECASE)


def check_grammar(grammar: str) -> str | None:
    """None when llguidance compiles `grammar` within its limits and its first steps work, else a short
    error. May take up to about a second on the largest grammars ember accepts; may crash the process on
    grammars past grammar_limits (the reason the worker exists)."""
    limits = parser_limits()
    message = llguidance.LLMatcher.validate_grammar(grammar, None, limits=limits)
    if message:
        return clean_message(message)
    return trial_steps(grammar, byte_tokenizer(), limits)


def trial_steps(
    grammar: str,
    tokenizer: llguidance.LLTokenizer,
    limits: llguidance.LLParserLimits | None = None,
    steps: int = TRIAL_STEPS,
) -> str | None:
    """Build a matcher and walk `steps` tokens (each time the lowest allowed one that is not end-of-sequence);
    the matcher's error if it fails."""
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=limits or parser_limits())
    if matcher.is_error():
        message = matcher.get_error()
        if tokenizer is byte_tokenizer() and _VOCABULARY_ERRORS.search(message):
            return None
        return f"fails at its first tokens: {clean_message(message)}"
    eos = set(tokenizer.eos_tokens)
    for _ in range(steps):
        mask = matcher.compute_bitmask()
        if matcher.is_error():
            break
        token = _lowest_allowed(mask, eos)
        if token is None:
            return None  # only end-of-sequence may follow
        if not matcher.consume_token(token) or matcher.is_error():
            break
        if matcher.is_stopped():
            return None
    else:
        return None
    # The mask allowed the token, so this is one of llguidance's limits (items per step, lexer fuel...).
    return f"over llguidance's limits at its first tokens: {clean_message(matcher.get_error())}"


def _lowest_allowed(mask: bytes, excluded: set[int]) -> int | None:
    for word_index in range(0, len(mask), 4):
        word = int.from_bytes(mask[word_index : word_index + 4], "little")
        while word:
            low = word & -word
            token = word_index * 8 + low.bit_length() - 1
            if token not in excluded:
                return token
            word ^= low
    return None
