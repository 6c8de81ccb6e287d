"""The batched bool masks equal llguidance's own per-token answer, row by row, as the grammar advances."""

from __future__ import annotations

import json
import random

import llguidance
import pytest
import torch

from ember.models.loader import LoadedModel
from ember.structured import ReasoningSection, spec_from_response_format
from ember.structured.compiler import GrammarCompiler
from ember.structured.matcher import allowed_token_masks
from ember.structured.spec import StructuredSpec

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 999},
        "tags": {"type": "array", "items": {"enum": ["x", "yz"]}, "maxItems": 2},
    },
    "required": ["id", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def compiler(smollm_fp32_model: LoadedModel) -> GrammarCompiler:
    return GrammarCompiler(smollm_fp32_model.tokenizer, smollm_fp32_model.tokenizer.eos_token_ids)


def reference_mask(matcher: llguidance.LLMatcher, vocab_size: int) -> torch.Tensor:
    """One byte per token from llguidance's slow path: 0 disallowed, 200 allowed."""
    bias = torch.frombuffer(bytearray(matcher.compute_logit_bias()), dtype=torch.uint8)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[: min(vocab_size, bias.numel())] = bias[:vocab_size] > 0
    return mask


def test_masks_match_llguidance_along_random_walks(
    compiler: GrammarCompiler, smollm_fp32_model: LoadedModel
) -> None:
    spec = StructuredSpec("json_schema", json.dumps(SCHEMA))
    grammar = compiler.compile(spec)
    vocab = smollm_fp32_model.config.vocab_size + 7  # a model's padded rows beyond the tokenizer stay masked
    rng = random.Random(0)
    matchers = [compiler.matcher(spec) for _ in range(3)]
    references = [llguidance.LLMatcher(compiler.grammar_tokenizer, grammar) for _ in range(3)]
    for _ in range(30):
        live = [i for i, m in enumerate(matchers) if not m.is_finished]
        if not live:
            break
        masks = allowed_token_masks([matchers[i] for i in live], vocab)  # [R, V]
        for row, i in enumerate(live):
            expected = reference_mask(references[i], vocab)
            assert torch.equal(masks[row], expected)
            assert not masks[row, smollm_fp32_model.config.vocab_size :].any()
            token = rng.choice(expected.nonzero().flatten().tolist())
            matchers[i].accept(token)
            assert references[i].consume_token(token)


def test_rejected_token_is_a_value_error(compiler: GrammarCompiler, smollm_fp32_model: LoadedModel) -> None:
    matcher = compiler.matcher(StructuredSpec("choice", '["yes", "no"]'))
    token = smollm_fp32_model.tokenizer.encode("maybe")[0]
    with pytest.raises(ValueError, match="violates the output grammar"):
        matcher.accept(token)


def test_compiled_grammars_are_cached(compiler: GrammarCompiler) -> None:
    spec = StructuredSpec("regex", "[a-c]+")
    assert compiler.compile(spec) is compiler.compile(StructuredSpec("regex", "[a-c]+"))


@pytest.mark.parametrize("opened", [False, True])
def test_constraint_applies_after_the_reasoning_section(
    compiler: GrammarCompiler, smollm_fp32_model: LoadedModel, opened: bool
) -> None:
    tokenizer = smollm_fp32_model.tokenizer
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    spec = spec_from_response_format(
        {"type": "json_object", "schema": schema}, ReasoningSection(opened=opened)
    )
    assert spec is not None
    opening = "" if opened else "<think>"
    cases = {
        f'{opening}\nMaybe {{"a": "x"}}? No.\n</think>\n\n{{"a": 5}}': True,  # JSON-like reasoning is free
        f"{opening}ok</think>{{}}": False,  # after it, the schema holds
        '{"a": 7}': not opened,  # no reasoning at all only when the prompt did not open it
    }
    for text, valid in cases.items():
        matcher = compiler.matcher(spec)
        tokens = tokenizer.encode(text)
        try:
            for token in tokens:
                matcher.accept(token)
            accepted = matcher.is_accepting
        except ValueError:
            accepted = False
        assert accepted is valid, text
