"""The GGUF tokenizer against transformers' GGUF tokenizer (and llama.cpp when it is installed)."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import pytest
from gguf_helpers import SPECIAL_TOKENS, TinyGGUFSpec, write_tiny_gguf

from ember.models.bpe_backend import build_gguf_bpe, pre_tokenizer_spec
from ember.models.default_model import default_gguf_path
from ember.models.errors import ModelLoadError
from ember.models.gguf_file import open_gguf, read_fields
from ember.models.gguf_loader import load_gguf_tokenizer
from ember.models.tokenizer import Tokenizer

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 5 o'clock, isn't it? We'll see, they'd say.",
    "code": 'def main():\n\tif x:\n        return {"a": [1, 2]}  # done\n\n\nclass A:\n    pass\n',
    "cjk": "日本語のテキストと中文字符，还有한국어 문장。",
    "emoji": "Party 🎉🙂👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "accents": "naïve café résumé Ångström façade Zürich ñandú",
    "rtl": "مرحبا بالعالم שלום עולם",
    "numbers": "3.14159 1,000,000 2024-06-01 0x1F 1e-5 -42 12345678901234567890",
    "whitespace": "a  b   c\t\td\n\ne \r\n f      \n\n\n   ",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi <|im_end|>x<|im_start|>assistant\n",
    "specials_inline": "text<|endoftext|>more<file_sep>end",
    "leading_space": "   leading spaces and trailing   ",
    "empty": "",
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_gguf_tokenizer(default_gguf_path())[0]


@pytest.mark.parametrize("kind", list(TEXTS))
def test_ids_match_transformers_gguf_tokenizer(
    tokenizer: Tokenizer, smollm_tokenizer: Any, kind: str
) -> None:
    # smollm_tokenizer: transformers' PreTrainedTokenizerFast read from the same GGUF (tests/conftest.py)
    text = TEXTS[kind]
    assert tokenizer.encode(text) == smollm_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("kind", list(TEXTS))
def test_decode_inverts_encode(tokenizer: Tokenizer, kind: str) -> None:
    text = TEXTS[kind]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert b"".join(tokenizer.token_bytes(i) for i in tokenizer.encode(text)) == text.encode("utf-8")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_ids_match_llama_cpp(tokenizer: Tokenizer) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=default_gguf_path(), vocab_only=True, verbose=False)
    for text in TEXTS.values():
        assert tokenizer.encode(text) == llm.tokenize(text.encode("utf-8"), add_bos=False, special=True), text


@pytest.fixture(scope="module")
def default_vocab() -> tuple[list[str], list[str], list[int]]:
    fields = read_fields(open_gguf(default_gguf_path()))
    return tuple(fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "merges", "token_type"))  # type: ignore[return-value]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("pre", ["default", "gpt-2", "smollm", "qwen2", "llama-bpe"])
def test_every_pre_tokenizer_matches_llama_cpp(
    tmp_path: os.PathLike[str], default_vocab: tuple[list[str], list[str], list[int]], pre: str
) -> None:
    """SmolLM2's vocabulary under each pre-tokenizer llama.cpp knows by that name (NFC input: llama.cpp does
    not normalize, the Qwen2 tokenizer does)."""
    import llama_cpp

    path = os.path.join(tmp_path, f"{pre}.gguf")
    write_tiny_gguf(path, TinyGGUFSpec(vocab=default_vocab, pre=pre))
    ours = load_gguf_tokenizer(path)[0]
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    extra = "DON'T WE'LL 1234567 $5+3=8 x^2 a|b ~/tmp <tag> 'quoted' \r\n\r\n  \t end"
    for text in [*TEXTS.values(), extra]:
        assert ours.encode(text) == llm.tokenize(text.encode("utf-8"), add_bos=False, special=True), text


def test_default_model_special_tokens(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 49152
    assert (tokenizer.bos_token_id, tokenizer.bos_token) == (1, "<|im_start|>")
    assert (tokenizer.eos_token_id, tokenizer.eos_token, tokenizer.eos_token_ids) == (2, "<|im_end|>", (2,))
    assert tokenizer.special_token_ids == frozenset(range(17))
    assert tokenizer.id_of("<|im_end|>") == 2 and tokenizer.id_of("Ġthe") is not None
    assert tokenizer.id_of("no-such-token-here") is None
    # The ChatML template writes <|im_start|> itself: raw prompts must stay untouched.
    assert tokenizer.add_bos is False
    assert tokenizer.encode("Hello", add_special_tokens=True) == tokenizer.encode("Hello")


def test_decode_can_skip_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("<|im_start|>user\nHi there<|im_end|>\n")
    assert ids[0] == 1 and 2 in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi there\n"


def test_token_bytes_of_a_multi_byte_character_split_across_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🙂")
    assert len(ids) > 1  # the emoji's 4 UTF-8 bytes are not one token
    parts = [tokenizer.token_bytes(i) for i in ids]
    assert b"".join(parts) == "🙂".encode()
    assert parts[0] == b"\xf0\x9f"
    assert tokenizer.token_text(ids[0]) == "\ufffd"  # incomplete UTF-8 shows as a replacement character
    assert tokenizer.token_text(tokenizer.encode(" the")[0]) == " the"
    assert tokenizer.decode(ids[:1]) == "\ufffd"


def test_unknown_ids_are_rejected(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="token id 49152 is not in the vocabulary"):
        tokenizer.token_bytes(49152)
    with pytest.raises(ValueError, match="token id -1"):
        tokenizer.decode([5, -1])


def _tiny_tokenizer(tmp_path: os.PathLike[str], **fields: object) -> Tokenizer:
    path = os.path.join(tmp_path, "tok.gguf")
    write_tiny_gguf(path, TinyGGUFSpec(fields=fields))
    return load_gguf_tokenizer(path)[0]


def test_add_bos_follows_declaration_unless_template_writes_bos(tmp_path: os.PathLike[str]) -> None:
    bos = SPECIAL_TOKENS[0]
    declared = _tiny_tokenizer(tmp_path, **{"tokenizer.chat_template": "{{ bos_token }}{{ messages }}"})
    assert declared.add_bos and declared.bos_token == bos
    ids = declared.encode("he", add_special_tokens=True)
    assert ids == [declared.bos_token_id, declared.id_of("he")]
    assert declared.encode(bos + "he", add_special_tokens=True) == ids  # never a second BOS
    assert declared.encode("he") == [declared.id_of("he")]

    literal = _tiny_tokenizer(tmp_path, **{"tokenizer.chat_template": bos + "{{ messages }}"})
    assert not literal.add_bos
    assert literal.encode("he", add_special_tokens=True) == [literal.id_of("he")]

    not_declared = _tiny_tokenizer(tmp_path, **{"tokenizer.ggml.add_bos_token": False})
    assert not not_declared.add_bos


def test_eos_ids_include_end_of_turn_ids(tmp_path: os.PathLike[str]) -> None:
    tok = _tiny_tokenizer(
        tmp_path, **{"tokenizer.ggml.eot_token_id": 256, "tokenizer.ggml.eom_token_id": 259}
    )
    assert tok.eos_token_ids == (259, 256)  # the GGUF eos first; the eom id equals it and is not repeated


@pytest.mark.parametrize(
    ("pre", "expected_pieces"),
    [
        ("default", ["123", "45", "Ġ", "6"]),
        ("gpt-2", ["123", "45", "Ġ", "6"]),
        ("smollm", ["1", "2", "3", "4", "5", "Ġ", "6"]),
        ("qwen2", ["1", "2", "3", "4", "5", "Ġ", "6"]),
        ("llama-bpe", ["123", "45", "Ġ", "6"]),
    ],
)
def test_pre_tokenizer_digit_splitting(pre: str, expected_pieces: list[str]) -> None:
    from ember.models.bpe_backend import BYTE_TO_CHAR

    tokens = [BYTE_TO_CHAR[b] for b in range(256)] + ["12", "123", "45"]
    backend = build_gguf_bpe(tokens, ["1 2", "12 3", "4 5"], [1] * len(tokens), pre_tokenizer_spec(pre))
    assert backend.encode("12345 6", add_special_tokens=False).tokens == expected_pieces


def test_llama3_pre_tokenizer_splits_digits_by_three_and_contractions_case_insensitively() -> None:
    from ember.models.bpe_backend import BYTE_TO_CHAR

    tokens = [BYTE_TO_CHAR[b] for b in range(256)]
    backend = build_gguf_bpe(tokens, [], [1] * 256, pre_tokenizer_spec("llama-bpe"))
    pieces = backend.pre_tokenizer.pre_tokenize_str("DON'T 1234567")
    assert [p for p, _ in pieces] == ["DON", "'T", "Ġ", "123", "456", "7"]


def test_unsupported_pre_tokenizer_is_a_load_error(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ModelLoadError, match="unsupported pre-tokenizer tokenizer.ggml.pre='mystery'"):
        _tiny_tokenizer(tmp_path, **{"tokenizer.ggml.pre": "mystery"})


def test_from_hf_folder_matches_the_gguf_tokenizer(
    tmp_path: os.PathLike[str], tokenizer: Tokenizer, default_vocab: tuple[list[str], list[str], list[int]]
) -> None:
    backend = build_gguf_bpe(*default_vocab, pre_tokenizer_spec("smollm"))
    backend.save(os.path.join(tmp_path, "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": True}
    config["chat_template"] = load_gguf_tokenizer(default_gguf_path())[1]
    with open(os.path.join(tmp_path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(tmp_path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [2, 0]}, f)

    hf = Tokenizer.from_hf_folder(str(tmp_path))
    for text in TEXTS.values():
        assert hf.encode(text) == tokenizer.encode(text)
        assert hf.decode(hf.encode(text)) == text
    assert (hf.vocab_size, hf.bos_token_id, hf.eos_token_ids) == (49152, 1, (2, 0))
    assert hf.special_token_ids == tokenizer.special_token_ids
    assert not hf.add_bos  # declared, but the ChatML template writes <|im_start|> literally
    assert hf.token_bytes(hf.encode("🙂")[0]) == b"\xf0\x9f"


def test_from_hf_folder_without_tokenizer_json(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        Tokenizer.from_hf_folder(str(tmp_path))
