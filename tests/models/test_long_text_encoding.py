"""A long text is encoded in pieces (models/long_text_encoding.py) so the server's event loop keeps getting the
GIL: the ids must be exactly those of encoding it whole."""

from __future__ import annotations

import random

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models

from ember.engine.testing import tiny_loaded_model
from ember.models.long_text_encoding import _cut_is_clean, cut_pattern, cut_points, encode_long_text

WORDS = [
    "the",
    "cat",
    "  ",
    "\n",
    "\n\n",
    "42",
    "3.14",
    "é",
    "naïve",
    "東京",
    "🙂",
    "<|im_end|>",
    "<|im_start|>",
    "don't",
    "x=1;",
    "   indented",
    "\t",
    "(a,b)",
    "--",
    "'s",
    "...",
    "URL:http://a.b/c?d=e",
    "ÅÅÅ",
]


def _random_text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(WORDS) + rng.choice([" ", " ", " ", "", "  ", "\n"]) for _ in range(words))


def test_pieces_give_the_ids_of_the_whole_text() -> None:
    backend = tiny_loaded_model().tokenizer._backend
    rng = random.Random(3)
    for _ in range(30):
        text = _random_text(rng, rng.randrange(200, 2000))
        whole = backend.encode_batch([text], add_special_tokens=False)[0].ids
        cuts = cut_points(text, piece_chars=64)  # the pieces are small, so there are many cuts to get right
        assert cuts and all(_cut_is_clean(backend, text, cut) for cut in cuts)  # so it is encoded in pieces
        assert encode_long_text(backend, text, piece_chars=64) == whole


def test_the_tokenizer_encodes_a_long_text_as_one_call_would() -> None:
    tokenizer = tiny_loaded_model().tokenizer
    text = _random_text(random.Random(5), 40_000)  # ~150k characters: the default pieces cut it
    assert len(cut_points(text)) >= 2
    assert tokenizer.encode(text) == tokenizer._backend.encode_batch([text], add_special_tokens=False)[0].ids


def test_a_tokenizer_whose_pieces_would_differ_encodes_the_text_whole() -> None:
    # No pre-tokenizer: a merge may cross the space a cut goes before, so the pieces would differ.
    vocab = {"a": 0, "b": 1, " ": 2, "b ": 3}
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=[("b", " ")]))
    text = "ab " * 200
    cuts = cut_points(text, piece_chars=64)
    assert cuts and not _cut_is_clean(backend, text, cuts[0])
    assert encode_long_text(backend, text, piece_chars=64) == backend.encode(text).ids


def test_a_chat_prompt_without_spaces_is_cut_before_its_special_tokens() -> None:
    tokenizer = tiny_loaded_model().tokenizer
    backend = tokenizer._backend
    text = "".join(f"<|im_start|>{'user' if i % 2 else 'assistant'}\nhi{i}<|im_end|>\n" for i in range(3000))
    pattern = cut_pattern(t.content for t in backend.get_added_tokens_decoder().values())
    assert cut_points(text) == []  # no single space anywhere
    cuts = cut_points(text, pattern=pattern)
    assert len(cuts) >= 2 and all(text.startswith("<|im_", cut) for cut in cuts)
    assert all(_cut_is_clean(backend, text, cut) for cut in cuts)
    assert tokenizer.encode(text) == backend.encode_batch([text], add_special_tokens=False)[0].ids


def test_short_texts_and_texts_without_a_cut_point_are_one_piece() -> None:
    assert cut_points("short text", piece_chars=64) == []
    assert cut_points("x" * 1000, piece_chars=64) == []
    assert cut_points("a  " * 1000, piece_chars=64) == []  # only double spaces: no clean cut
