"""The one generation-budget rule: prompt length, max_tokens, the context length and Fireworks' behavior, as the
engine, the scheduler and the API all apply it."""

from __future__ import annotations

import pytest

from ember.engine.generation_budget import (
    CONTEXT_LENGTH_EXCEEDED,
    GenerationBudgetError,
    resolve_max_tokens,
)
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config
from ember.models.loader import LoadedModel


def test_max_tokens_is_a_cap_cut_to_the_context_left() -> None:
    assert resolve_max_tokens(100, None, 128) == 28  # no max_tokens: the remaining context
    assert resolve_max_tokens(100, 10, 128) == 10
    assert resolve_max_tokens(100, 1000, 128) == 28
    assert resolve_max_tokens(100, 1000, 128, "truncate") == 28
    assert resolve_max_tokens(127, None, 128, "error") == 1  # one token of room is room enough


def test_error_behavior_refuses_what_truncate_would_cut() -> None:
    assert resolve_max_tokens(100, 28, 128, "error") == 28  # an exact fit is no error
    with pytest.raises(
        GenerationBudgetError, match=r"plus max_tokens \(29\) exceeds max_model_len 128"
    ) as info:
        resolve_max_tokens(100, 29, 128, "error")
    assert (info.value.param, info.value.code) == ("max_tokens", CONTEXT_LENGTH_EXCEEDED)


@pytest.mark.parametrize("behavior", ["truncate", "error"])
@pytest.mark.parametrize(("prompt_len", "relation"), [(128, "as many as"), (129, "more than")])
def test_a_prompt_that_fills_the_context_is_always_refused(
    prompt_len: int, relation: str, behavior: str
) -> None:
    with pytest.raises(GenerationBudgetError, match=f"{relation} max_model_len 128") as info:
        resolve_max_tokens(prompt_len, None, 128, behavior)
    assert (info.value.param, info.value.code) == ("prompt", CONTEXT_LENGTH_EXCEEDED)
    assert "context length" in str(info.value)


def test_inputs_without_any_budget_are_refused_without_the_context_code() -> None:
    with pytest.raises(GenerationBudgetError, match="the prompt is empty") as info:
        resolve_max_tokens(0, 5, 128)
    assert (info.value.param, info.value.code) == ("prompt", None)
    with pytest.raises(GenerationBudgetError, match="max_tokens must be at least 1") as info:
        resolve_max_tokens(5, 0, 128)
    assert (info.value.param, info.value.code) == ("max_tokens", None)
    with pytest.raises(ValueError, match="context_length_exceeded_behavior must be one of"):
        resolve_max_tokens(5, 5, 128, "wrap")


def test_the_engine_admits_by_the_same_rule(tiny_llama: LoadedModel) -> None:
    engine = LLMEngine(tiny_llama, tiny_engine_config(max_model_len=64))
    engine.add_request("cut", list(range(100, 160)), SamplingParams(max_tokens=50))
    assert engine.sequences["cut"].sequence.max_tokens == 4  # 64 - 60
    with pytest.raises(GenerationBudgetError, match="more than max_model_len 64") as info:
        engine.add_request("long", list(range(100, 165)), SamplingParams(max_tokens=1))
    assert info.value.code == CONTEXT_LENGTH_EXCEEDED
    with pytest.raises(GenerationBudgetError, match="the prompt is empty"):
        engine.add_request("empty", [], SamplingParams())
    assert list(engine.requests) == ["cut"]
    engine.abort_request("cut")
