"""Text <-> token ids for a loaded model: a byte-level BPE built on the `tokenizers` library, from GGUF
metadata or from a Hugging Face folder, plus the raw bytes of every token (for logprobs and streaming).

BOS policy: `add_bos` follows the checkpoint's declaration (tokenizer.ggml.add_bos_token, or the Hugging Face
tokenizer's own behaviour) except when the chat template writes the BOS token string literally. ChatML models
such as SmolLM2 declare <|im_start|> as BOS; their template opens every message with that string itself, and
prepending it to a raw completion prompt would change the prompt. Templates that use the `bos_token` variable
(Llama-3) keep the declared behaviour, and a text that already starts with BOS never gets a second one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from ember.models.bpe_backend import (
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
    build_gguf_bpe,
    byte_level_token_bytes,
    pre_tokenizer_spec,
)
from ember.models.errors import ModelLoadError
from ember.models.long_text_encoding import PIECE_CHARS, cut_pattern, encode_long_text

# GGUF ids that end a turn besides tokenizer.ggml.eos_token_id.
_GGUF_EXTRA_EOS_KEYS = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


def _should_add_bos(declared: bool, bos_token: str | None, chat_template: str | None) -> bool:
    if not declared or bos_token is None:
        return False
    return not (chat_template is not None and bos_token in chat_template)


class Tokenizer:
    """Encode/decode plus per-token bytes. Special-token strings in input text are always parsed."""

    def __init__(
        self,
        backend: BackendTokenizer,
        token_bytes: Sequence[bytes | None],
        *,
        special_token_ids: Iterable[int],
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        add_bos: bool,
    ) -> None:
        self._backend = backend
        self._token_bytes = list(token_bytes)
        self.vocab_size: int = len(self._token_bytes)
        for name, token_id in (("bos", bos_token_id), *(("eos", i) for i in eos_token_ids)):
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(f"{name} token id {token_id} is outside the vocabulary of {self.vocab_size}")
        if add_bos and bos_token_id is None:
            raise ValueError("add_bos is set but the tokenizer has no BOS token")
        self.special_token_ids: frozenset[int] = frozenset(special_token_ids)
        self.bos_token_id: int | None = bos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.eos_token_id: int | None = self.eos_token_ids[0] if self.eos_token_ids else None
        self.add_bos: bool = add_bos
        # Where a long text may be cut for encoding in pieces: also before special tokens (chat prompts).
        self._cut_pattern = cut_pattern(t.content for t in backend.get_added_tokens_decoder().values())
        self.bos_token: str | None = None if bos_token_id is None else backend.id_to_token(bos_token_id)
        self.eos_token: str | None = (
            None if self.eos_token_id is None else backend.id_to_token(self.eos_token_id)
        )

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, Any], source: str) -> Tokenizer:
        """From GGUF metadata already read into Python values ("tokenizer.ggml.tokens" -> list[str], ...).
        Only byte-level BPE (tokenizer.ggml.model == "gpt2") is supported; `source` names the file in errors."""
        model = fields.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ModelLoadError(
                source,
                f"unsupported tokenizer model tokenizer.ggml.model={model!r}; ember supports 'gpt2' (BPE)",
            )
        tokens: list[str] = list(fields.get("tokenizer.ggml.tokens") or [])
        merges: list[str] = list(fields.get("tokenizer.ggml.merges") or [])
        if not tokens or not merges:
            raise ModelLoadError(source, "GGUF lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
        token_types = [
            int(t) for t in fields.get("tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens)
        ]
        if len(token_types) != len(tokens):
            raise ModelLoadError(source, f"{len(token_types)} token types for {len(tokens)} tokens")
        try:
            spec = pre_tokenizer_spec(str(fields.get("tokenizer.ggml.pre", "default")))
            backend = build_gguf_bpe(tokens, merges, token_types, spec)
        except ValueError as e:
            raise ModelLoadError(source, str(e)) from None
        token_bytes = [
            byte_level_token_bytes(tok) if kind == TOKEN_TYPE_NORMAL else tok.encode("utf-8")
            for tok, kind in zip(tokens, token_types, strict=True)
        ]
        bos_id = _optional_int(fields.get("tokenizer.ggml.bos_token_id"))
        eos_ids = [fields.get("tokenizer.ggml.eos_token_id"), *(fields.get(k) for k in _GGUF_EXTRA_EOS_KEYS)]
        declared_bos = fields.get("tokenizer.ggml.add_bos_token")
        declared = spec.add_bos_default if declared_bos is None else bool(declared_bos)
        bos_text = None if bos_id is None or bos_id >= len(tokens) else tokens[bos_id]
        try:
            return cls(
                backend,
                token_bytes,
                special_token_ids=(i for i, kind in enumerate(token_types) if kind == TOKEN_TYPE_CONTROL),
                bos_token_id=bos_id,
                eos_token_ids=[int(i) for i in eos_ids if i is not None],
                add_bos=_should_add_bos(declared, bos_text, fields.get("tokenizer.chat_template")),
            )
        except ValueError as e:
            raise ModelLoadError(source, str(e)) from None

    @classmethod
    def from_hf_folder(cls, path: str) -> Tokenizer:
        """From a Hugging Face model folder: tokenizer.json (byte-level BPE), tokenizer_config.json, and
        generation_config.json's eos ids when present."""
        tokenizer_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tokenizer_file):
            raise ModelLoadError(path, "no tokenizer.json in the model folder")
        try:
            with open(tokenizer_file, encoding="utf-8") as f:
                spec = json.load(f)
            backend = BackendTokenizer.from_str(json.dumps(spec))
        except Exception as e:  # json, OS and the tokenizers library each raise their own error types
            raise ModelLoadError(tokenizer_file, f"cannot read tokenizer: {e}") from None
        if not _is_byte_level(spec.get("decoder")):
            raise ModelLoadError(
                tokenizer_file, "only byte-level BPE tokenizers (ByteLevel decoder) are supported"
            )
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        generation = _read_json(os.path.join(path, "generation_config.json"))

        vocab = backend.get_vocab(with_added_tokens=True)
        added = {int(t["id"]): t for t in spec.get("added_tokens", [])}
        token_bytes: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        for token, token_id in vocab.items():
            token_bytes[token_id] = (
                token.encode("utf-8") if token_id in added else byte_level_token_bytes(token)
            )

        bos_token = _token_content(config.get("bos_token"))
        bos_id = None if bos_token is None else backend.token_to_id(bos_token)
        eos_ids = [backend.token_to_id(t) for t in [_token_content(config.get("eos_token"))] if t is not None]
        generation_eos = generation.get("eos_token_id")
        eos_ids += generation_eos if isinstance(generation_eos, list) else [generation_eos]
        if "add_bos_token" in config:
            declared = bool(config["add_bos_token"])
        else:  # the post-processor (e.g. Llama-3's TemplateProcessing) decides
            declared = bos_id is not None and backend.encode("a", add_special_tokens=True).ids[:1] == [bos_id]
        try:
            return cls(
                backend,
                token_bytes,
                special_token_ids=(i for i, t in added.items() if t.get("special")),
                bos_token_id=bos_id,
                eos_token_ids=[int(i) for i in eos_ids if i is not None],
                add_bos=_should_add_bos(declared, bos_token, read_hf_chat_template(path)),
            )
        except ValueError as e:
            raise ModelLoadError(path, str(e)) from None

    # -- public API ---------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. With add_special_tokens, BOS is prepended when `add_bos` is set and the text
        does not already start with it."""
        # encode_batch, not encode: only the batch call lets go of the GIL while it tokenizes; a long text in
        # pieces, so that handing its ids over and freeing them does not keep the GIL (see long_text_encoding).
        if len(text) > 2 * PIECE_CHARS:
            ids = encode_long_text(self._backend, text, pattern=self._cut_pattern)
        else:
            ids = self._backend.encode_batch([text], add_special_tokens=False)[0].ids
        bos = self.bos_token_id
        if add_special_tokens and self.add_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of `ids`; bytes that do not form valid UTF-8 become U+FFFD."""
        special = self.special_token_ids if skip_special_tokens else frozenset()
        return b"".join(self.token_bytes(i) for i in ids if i not in special).decode(
            "utf-8", errors="replace"
        )

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (a token may hold part of a multi-byte character)."""
        raw = self._token_bytes[token_id] if 0 <= token_id < self.vocab_size else None
        if raw is None:
            raise ValueError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return raw

    def token_text(self, token_id: int) -> str:
        """The token as text for logprobs; partial UTF-8 sequences show as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def id_of(self, token: str) -> int | None:
        """The id of a vocabulary entry or special token given by its exact string ("<|im_end|>", "Ġthe")."""
        return self._backend.token_to_id(token)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
            f"add_bos={self.add_bos})"
        )


def read_hf_chat_template(path: str) -> str | None:
    """The chat template of a Hugging Face folder: chat_template.jinja, else tokenizer_config.json's
    `chat_template` (a string, or the entry named "default" of a list of named templates)."""
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    template = _read_json(os.path.join(path, "tokenizer_config.json")).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _read_json(file: str) -> dict[str, Any]:
    if not os.path.isfile(file):
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(file, f"cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(file, "expected a JSON object")
    return data


def _token_content(value: object) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _is_byte_level(decoder: object) -> bool:
    if not isinstance(decoder, dict):
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return decoder.get("type") == "Sequence" and any(_is_byte_level(d) for d in decoder.get("decoders", []))


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]
