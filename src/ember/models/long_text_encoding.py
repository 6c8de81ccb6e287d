"""A long text encoded in pieces, cut where the pre-tokenizer splits anyway, so no single call into the
`tokenizers` library keeps the GIL for long.

The library lets go of the GIL while it tokenizes (`encode_batch`), but not while it hands the ids to Python
(~90 ms for 1M tokens on a loaded 2-core machine) nor while the result is freed (~150 ms: every token's string
and offsets). The server's event loop runs on another thread and answers nobody during those. In pieces of
~32k characters each hand-over is short, and the GIL is free between pieces.

A cut goes before a single space that stands between two non-space characters, or before an added token's
text (`<|im_start|>`: a chat prompt may have no spaces at all): the byte-level pre-tokenizers (GPT-2's regex
and llama.cpp's variants) always start a new pre-token before such a space, the tokenizer splits added tokens
out before pre-tokenizing, and BPE merges never cross pre-tokens, so the pieces give the ids of the whole. Each
cut is also checked on the text around it (one call for the window must equal the two halves'); if any check
fails, the text is encoded whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer as BackendTokenizer

PIECE_CHARS = 32_768
# Characters either side of a cut that its check encodes: longer than any pre-token that could reach it.
CHECK_WINDOW = 256
_SINGLE_SPACE = r"(?<=\S) (?=\S)"


def cut_pattern(added_tokens: Iterable[str] = ()) -> re.Pattern[str]:
    """Where a cut may go: before a single space between non-spaces, or before one of `added_tokens`."""
    markers = sorted({t for t in added_tokens if len(t) > 1}, key=len, reverse=True)
    if not markers:
        return re.compile(_SINGLE_SPACE)
    return re.compile(f"{_SINGLE_SPACE}|(?=(?:{'|'.join(re.escape(m) for m in markers)}))")


_SPACES_ONLY = cut_pattern()


def cut_points(
    text: str, piece_chars: int = PIECE_CHARS, pattern: re.Pattern[str] = _SPACES_ONLY
) -> list[int]:
    """Where to cut `text`: roughly every `piece_chars`, each at a place `pattern` finds (see cut_pattern)."""
    cuts: list[int] = []
    start = 0
    while len(text) - start > 2 * piece_chars:
        found = pattern.search(text, start + piece_chars)
        if found is None or len(text) - found.start() < piece_chars:
            break
        cuts.append(found.start())
        start = found.start()
    return cuts


def encode_long_text(
    backend: BackendTokenizer,
    text: str,
    piece_chars: int = PIECE_CHARS,
    pattern: re.Pattern[str] = _SPACES_ONLY,
) -> list[int]:
    """The ids of `text` without special-token handling of BOS (add_special_tokens=False), in pieces."""
    cuts = cut_points(text, piece_chars, pattern)
    if not cuts or not all(_cut_is_clean(backend, text, cut) for cut in cuts):
        return _encode(backend, text)
    ids: list[int] = []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        ids += _encode(backend, text[start:end])
    return ids


def _cut_is_clean(backend: BackendTokenizer, text: str, cut: int) -> bool:
    left = text[max(0, cut - CHECK_WINDOW) : cut]
    right = text[cut : cut + CHECK_WINDOW]
    return _encode(backend, left + right) == _encode(backend, left) + _encode(backend, right)


def _encode(backend: BackendTokenizer, text: str) -> list[int]:
    # encode_batch, not encode: only the batch call lets go of the GIL while it tokenizes.
    return backend.encode_batch([text], add_special_tokens=False)[0].ids
