"""Incremental detokenization with the default model's real byte-level tokenizer."""

from __future__ import annotations

import random

import pytest

from ember.engine.detokenizer import IncrementalDetokenizer
from ember.models.default_model import default_gguf_path
from ember.models.gguf_loader import load_gguf_tokenizer
from ember.models.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"
MIXED_TEXT = "Hello 😀 world! 你好世界 🎉👍🏽 naïve café ∑ 𝔘 — 東京タワー 🇯🇵 done."


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok, _ = load_gguf_tokenizer(default_gguf_path())
    return tok


def stream(detok: IncrementalDetokenizer, ids: list[int], chunk: int = 1) -> list[str]:
    deltas = [detok.add_tokens(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    deltas.append(detok.flush())
    return deltas


def test_the_text_really_splits_characters_across_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MIXED_TEXT)
    assert sum(REPLACEMENT in tokenizer.decode([i]) for i in ids) >= 10


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_deltas_never_split_a_character_and_concatenate_to_decode(tokenizer: Tokenizer, chunk: int) -> None:
    ids = tokenizer.encode(MIXED_TEXT)
    detok = IncrementalDetokenizer(
        tokenizer, tokenizer.encode("<|im_start|>assistant\n"), skip_special_tokens=True
    )
    deltas = stream(detok, ids, chunk)
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == MIXED_TEXT
    assert detok.text == MIXED_TEXT


def test_an_emoji_is_released_only_when_its_last_byte_arrives(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(" 😀")
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)
    assert [detok.add_tokens([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add_tokens(ids[-1:]) == " 😀"


def test_flush_releases_an_unfinished_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 😀")[:-1]  # the emoji's last byte never comes
    detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)
    deltas = stream(detok, ids)
    assert REPLACEMENT in deltas[-1]
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert detok.flush() == ""


def test_special_tokens_are_skipped_or_kept(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hi there<|im_end|>\nbye")
    skipping = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)
    keeping = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    assert "".join(stream(skipping, ids)) == "Hi there\nbye"
    assert "".join(stream(keeping, ids)) == "Hi there<|im_end|>\nbye"


def test_prompt_context_does_not_leak_into_the_output(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("<|im_start|>user\nSay hi 😀<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.encode(" Hi! 你好")
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=False)
    assert "".join(stream(detok, ids)) == " Hi! 你好"


def test_a_prompt_ending_inside_a_character_is_not_repeated(tokenizer: Tokenizer) -> None:
    text_ids = tokenizer.encode("x 世界")
    detok = IncrementalDetokenizer(tokenizer, text_ids[:-1], skip_special_tokens=True)
    # The completing byte finishes a character whose start belongs to the prompt: nothing of it is emitted
    # twice, and later text flows normally.
    deltas = stream(detok, [text_ids[-1], *tokenizer.encode(" ok")])
    assert "".join(deltas).endswith(" ok")
    assert "世" not in "".join(deltas)


def test_random_token_sequences_concatenate_to_decode(tokenizer: Tokenizer) -> None:
    rng = random.Random(0)
    # Byte tokens and ordinary tokens mixed, so invalid UTF-8 appears mid-stream too.
    byte_tokens = [i for i in range(tokenizer.vocab_size) if REPLACEMENT in tokenizer.decode([i])]
    assert byte_tokens
    for _ in range(30):
        ids = [
            rng.choice(byte_tokens) if rng.random() < 0.5 else rng.randrange(tokenizer.vocab_size)
            for _ in range(rng.randrange(1, 40))
        ]
        for skip in (True, False):
            detok = IncrementalDetokenizer(tokenizer, [rng.randrange(tokenizer.vocab_size)], skip)
            deltas = stream(detok, ids, rng.choice([1, 2, 5]))
            assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip)
            assert all(not d.endswith(REPLACEMENT) for d in deltas[:-1])
