"""The checkpoint's generation defaults are the base for every value a request leaves out: the request's own
value wins, then the checkpoint's, then ember's neutral default."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from ember.engine.generation_defaults import default_sampling_params
from ember.engine.llm import LLM
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.models.checkpoint import GenerationDefaults


def test_the_checkpoints_values_replace_only_the_neutral_defaults_they_set() -> None:
    params = default_sampling_params(
        GenerationDefaults(eos_token_ids=(2,), temperature=0.6, top_p=0.9, top_k=20, repetition_penalty=1.05)
    )
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.6, 0.9, 20, 1.05)
    neutral = SamplingParams()
    assert dataclasses.replace(params, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0) == neutral
    assert default_sampling_params(GenerationDefaults(top_p=0.8)) == SamplingParams(top_p=0.8)
    assert default_sampling_params(GenerationDefaults()) == neutral


def test_an_invalid_checkpoint_value_is_logged_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ember.engine.generation_defaults"):
        params = default_sampling_params(GenerationDefaults(temperature=0.7, top_p=0.0))
    assert (params.temperature, params.top_p) == (0.7, 1.0)
    assert "ignoring the checkpoint's default top_p=0.0" in caplog.text


def test_offline_generation_without_params_samples_as_the_checkpoint_says() -> None:
    model = tiny_loaded_model("llama", seed=0)
    greedy_checkpoint = dataclasses.replace(
        model, generation=GenerationDefaults(eos_token_ids=(2,), temperature=0.0)
    )
    llm = LLM(greedy_checkpoint, engine_config=tiny_engine_config())
    assert llm.engine.default_params.temperature == 0.0
    prompt = [[5, 6, 7, 8, 9, 10]]

    def tokens(params: SamplingParams | None) -> list[int]:
        return llm.generate(prompt, params)[0].outputs[0].token_ids

    greedy = tokens(SamplingParams(temperature=0.0))
    assert tokens(None) == greedy, "no params: the checkpoint's temperature 0 makes it greedy"
    assert tokens(SamplingParams(temperature=1.0, seed=4)) != greedy, "the request's own value wins"
