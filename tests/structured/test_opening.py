"""The reply's first token decided by rule (tool_choice auto in the generic format): a call when the model gives
opening `<tool_call>` at least the threshold, text otherwise; checked on the rule itself and through the engine on
a tiny random model (whose own choice would be neither)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from ember.chat.tool_parsers import parser_for_syntax
from ember.engine.llm import LLM
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import default_tokenizer_and_template, tiny_engine_config, tiny_loaded_model
from ember.structured import GENERIC, GENERIC_TRIGGER, lazy_spec_for_tools
from ember.structured.opening import OpeningRule, decided_mask, opener_mask, opening_probability
from ember.structured.spec import OpeningChoice, ReasoningSection, StructuredSpec

TOKENIZER, _ = default_tokenizer_and_template()
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}]


def openers() -> torch.Tensor:
    return opener_mask(GENERIC_TRIGGER, TOKENIZER.vocab_size, TOKENIZER.token_bytes)  # type: ignore[attr-defined]


def test_the_openers_are_the_tokens_that_spell_the_start_of_the_marker() -> None:
    mask = openers()
    first = TOKENIZER.encode(GENERIC_TRIGGER)[0]  # type: ignore[attr-defined]
    assert mask[first]
    for token_id in mask.nonzero().flatten().tolist():
        piece = TOKENIZER.token_bytes(token_id)  # type: ignore[attr-defined]
        assert GENERIC_TRIGGER.encode().startswith(piece) or piece.startswith(GENERIC_TRIGGER.encode())
    assert not mask[TOKENIZER.encode("Hello")[0]]  # type: ignore[attr-defined]


def test_the_rule_compares_the_openers_share_with_the_threshold() -> None:
    mask = openers()
    first = int(mask.nonzero()[0])
    logits = torch.zeros(mask.shape[0])
    logits[first] = 5.0  # the argmax, yet only exp(5) / (exp(5) + V - 1) ~ 0.3% of the mass
    p = opening_probability(logits, mask)
    assert 0.001 < p < 0.01
    below = OpeningRule(OpeningChoice(GENERIC_TRIGGER, threshold=0.01), mask)
    above = OpeningRule(OpeningChoice(GENERIC_TRIGGER, threshold=0.001), mask)
    allowed, opens = decided_mask(logits, above, None)
    assert opens and torch.equal(allowed, mask)
    allowed, opens = decided_mask(logits, below, None)
    assert not opens and torch.equal(allowed, ~mask)
    # The grammar has the last word: a side it allows nothing of leaves the grammar's mask as it was.
    only_openers = mask.clone()
    allowed, _ = decided_mask(logits, below, only_openers)
    assert torch.equal(allowed, only_openers)


def test_the_choice_is_checked_and_never_comes_with_reasoning() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        OpeningChoice(GENERIC_TRIGGER, 1.5)
    with pytest.raises(ValueError, match="reasoning"):
        StructuredSpec("regex", "a", reasoning=ReasoningSection(), opening=OpeningChoice("<", 0.1))
    assert lazy_spec_for_tools(TOOLS, reasoning=ReasoningSection(), call_threshold=0.1).opening is None
    assert lazy_spec_for_tools(TOOLS).opening is None


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(tiny_loaded_model(), engine_config=tiny_engine_config())


def generate(llm: LLM, threshold: float, seed: int) -> str:
    spec = lazy_spec_for_tools(TOOLS, parallel_tool_calls=False, call_threshold=threshold)
    params = SamplingParams(max_tokens=48, temperature=1.0, seed=seed, structured=spec)
    ids = TOKENIZER.encode("<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n")  # type: ignore[attr-defined]
    return llm.generate([ids], params)[0].outputs[0].text


@pytest.mark.parametrize("seed", range(3))
def test_threshold_zero_opens_a_valid_call_and_threshold_one_answers_in_text(llm: LLM, seed: int) -> None:
    called = generate(llm, 0.0, seed)
    assert called.startswith(GENERIC_TRIGGER)
    parsed = parser_for_syntax(GENERIC).parse(called)
    (call,) = parsed.tool_calls
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), CITY)
    text = generate(llm, 1.0, seed)
    assert text and not text.startswith("<")


def test_no_draft_rides_along_with_the_decided_first_token() -> None:
    # Verification samples its rows without the rule, so a sequence whose first token is still to be decided
    # never drafts (a prompt-lookup draft after a cached prompt could otherwise carry `<tool_call>` through).
    from ember.engine.sequence import Sequence
    from ember.engine.speculation.config import DraftSettings
    from ember.engine.speculation.drafter import SequenceDrafter
    from ember.engine.speculation.policy import DraftPolicy

    prompt = [5, 6, 7, 8, 5, 6, 7]  # its suffix 5 6 7 occurred before: prompt lookup proposes 8
    settings = DraftSettings((), "on", 4, 1, 3)
    policy = DraftPolicy(max_batch=8)

    def sequence(structured: StructuredSpec) -> Sequence:
        params = SamplingParams(max_tokens=8, structured=structured)
        seq = Sequence("s", prompt, params, max_tokens=8, arrival_time=0.0)
        seq.drafter = SequenceDrafter(settings)
        return seq

    plain = sequence(StructuredSpec("regex", "[a-z]+"))
    assert policy.draft(plain, budget_left=8)
    deciding = sequence(lazy_spec_for_tools(TOOLS, call_threshold=0.1))
    assert policy.draft(deciding, budget_left=8) == []
