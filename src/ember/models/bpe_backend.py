"""Byte-level BPE pieces shared by the GGUF and Hugging Face tokenizer paths: GPT-2's byte <-> unicode
alphabet, the pre-tokenizer regexes llama.cpp selects by `tokenizer.ggml.pre`, and the `tokenizers` backend
built from GGUF vocabulary fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


BYTE_TO_CHAR: Mapping[int, str] = MappingProxyType(_gpt2_byte_alphabet())
CHAR_TO_BYTE: Mapping[str, int] = MappingProxyType({c: b for b, c in BYTE_TO_CHAR.items()})


def byte_level_token_bytes(token: str) -> bytes:
    """The raw bytes a byte-level BPE vocabulary entry stands for ("Ġthe" -> b" the")."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in token)
    except KeyError:
        # Not in the byte alphabet: an added token stored as plain text.
        return token.encode("utf-8")


# GGUF token types (llama.cpp's llama_token_type).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Split patterns from llama.cpp's llama-vocab.cpp (= the matching Hugging Face tokenizer.json). llama.cpp applies
# a pre-tokenizer's patterns one after another, each splitting the pieces the previous one produced and keeping
# both matches and the text between them.
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizerSpec:
    """How one `tokenizer.ggml.pre` value splits text before BPE."""

    split_patterns: tuple[str, ...]  # applied in order, each isolating its matches
    nfc: bool = False  # Qwen2's tokenizer.json normalizes to NFC (llama.cpp does not normalize)
    ignore_merges: bool = False  # whole words found in the vocabulary skip BPE (Llama-3)
    add_bos_default: bool = False  # llama.cpp's default when tokenizer.ggml.add_bos_token is absent


PRE_TOKENIZERS: Mapping[str, PreTokenizerSpec] = MappingProxyType(
    {
        # llama.cpp's fallback when tokenizer.ggml.pre is missing or "default".
        "default": PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]")),
        "gpt-2": PreTokenizerSpec((_GPT2_PATTERN,)),
        "smollm": PreTokenizerSpec((r"\p{N}", _GPT2_PATTERN)),
        "qwen2": PreTokenizerSpec((_QWEN2_PATTERN,), nfc=True),
        "llama-bpe": PreTokenizerSpec((_LLAMA3_PATTERN,), ignore_merges=True, add_bos_default=True),
    }
)


def pre_tokenizer_spec(pre: str) -> PreTokenizerSpec:
    try:
        return PRE_TOKENIZERS[pre]
    except KeyError:
        raise ValueError(
            f"unsupported pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: {', '.join(PRE_TOKENIZERS)}"
        ) from None


def build_gguf_bpe(
    tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int], spec: PreTokenizerSpec
) -> BackendTokenizer:
    """A `tokenizers` BPE over a GGUF vocabulary. CONTROL tokens become special added tokens and USER_DEFINED
    ones plain added tokens; both are matched verbatim in input text before any splitting."""
    vocab = {token: i for i, token in enumerate(tokens)}
    merge_pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ValueError(f"malformed BPE merge {merge!r} (expected 'left right')")
        merge_pairs.append((left, right))
    try:
        model = BPE(
            vocab=vocab,
            merges=merge_pairs,
            fuse_unk=False,
            byte_fallback=False,
            ignore_merges=spec.ignore_merges,
        )
    except Exception as e:  # the tokenizers library raises a bare Exception for inconsistent vocabularies
        raise ValueError(f"invalid BPE vocabulary: {e}") from None
    backend = BackendTokenizer(model)
    if spec.nfc:
        backend.normalizer = normalizers.NFC()
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in spec.split_patterns]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    backend.decoder = decoders.ByteLevel()  # unused by Tokenizer.decode; completes a saved tokenizer.json
    added = [
        AddedToken(tokens[i], special=kind == TOKEN_TYPE_CONTROL, normalized=False)
        for i, kind in enumerate(token_types)
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    backend.add_special_tokens([t for t in added if t.special])
    backend.add_tokens([t for t in added if not t.special])
    return backend
