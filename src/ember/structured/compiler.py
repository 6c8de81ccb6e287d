"""Compiles StructuredSpecs against one model's vocabulary and hands out per-sequence matchers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import llguidance
import torch

from ember.models.tokenizer import Tokenizer
from ember.structured.grammar import grammar_for
from ember.structured.matcher import GrammarMatcher
from ember.structured.opening import OpeningRule, opener_mask
from ember.structured.spec import OpeningChoice, StructuredSpec


class _TokenizerAdapter:
    """The shape llguidance.TokenizerWrapper reads: every token's bytes, special ids, EOS, an encoder."""

    def __init__(self, tokenizer: Tokenizer, eos_token_id: int) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.tokens = [_bytes_or_empty(tokenizer, i) for i in range(tokenizer.vocab_size)]
        self.special_token_ids = sorted(tokenizer.special_token_ids)

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text)


def _bytes_or_empty(tokenizer: Tokenizer, token_id: int) -> bytes:
    # Holes in a Hugging Face vocabulary have no bytes; llguidance never allows an empty token.
    try:
        return tokenizer.token_bytes(token_id)
    except ValueError:
        return b""


def build_grammar_tokenizer(tokenizer: Tokenizer, eos_token_ids: Sequence[int]) -> llguidance.LLTokenizer:
    """llguidance's view of the vocabulary (~0.1 s for 49k tokens): build once per model."""
    if not eos_token_ids:
        raise ValueError("constrained decoding needs at least one end-of-sequence token id")
    adapter = _TokenizerAdapter(tokenizer, eos_token_ids[0])
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(adapter), eos_token=list(eos_token_ids))


class GrammarCompiler:
    """Validated grammars by spec (the last `cache_size` kept: clients often repeat one schema)."""

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: Sequence[int], cache_size: int = 256) -> None:
        self._tokenizer = tokenizer
        self._eos_token_ids = tuple(eos_token_ids)
        self._grammar_tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[StructuredSpec, str] = OrderedDict()
        self._cache_size = cache_size
        self._openers: dict[str, torch.Tensor] = {}  # marker -> opener mask (one or two markers in practice)

    @property
    def grammar_tokenizer(self) -> llguidance.LLTokenizer:
        if self._grammar_tokenizer is None:  # built on first use: unconstrained servers never pay for it
            self._grammar_tokenizer = build_grammar_tokenizer(self._tokenizer, self._eos_token_ids)
        return self._grammar_tokenizer

    def compile(self, spec: StructuredSpec) -> str:
        """The spec's grammar, checked against this vocabulary; ValueError naming the problem."""
        grammar = self._cache.get(spec)
        if grammar is None:
            grammar = grammar_for(spec, self.grammar_tokenizer)
            self._cache[spec] = grammar
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(spec)
        return grammar

    def opening_rule(self, choice: OpeningChoice) -> OpeningRule:
        """The rule of `choice` over this vocabulary (the marker's opener tokens found once, ~50 ms)."""
        openers = self._openers.get(choice.marker)
        if openers is None:
            openers = opener_mask(choice.marker, self._tokenizer.vocab_size, self._tokenizer.token_bytes)
            self._openers[choice.marker] = openers
        return OpeningRule(choice, openers)

    def matcher(self, spec: StructuredSpec) -> GrammarMatcher:
        """A fresh matcher at the start of the spec's grammar."""
        return GrammarMatcher(self.grammar_tokenizer, self.compile(spec))
