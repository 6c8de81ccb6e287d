"""Where a served model's sampling defaults come from (vLLM's --generation-config / --override-generation-config),
and the embedded default model's card values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.models.checkpoint import GenerationDefaults
from ember.models.default_model import DEFAULT_MODEL_CARD_SAMPLING, default_gguf_path, is_default_gguf
from ember.models.generation_choice import GenerationChoice, parse_overrides, resolve_generation

SHIPPED = GenerationDefaults(eos_token_ids=(2,), temperature=0.6, top_k=20)


def test_auto_keeps_the_checkpoints_values_and_fills_the_rest_from_a_card_only_when_given() -> None:
    assert resolve_generation(SHIPPED, GenerationChoice(), None) == SHIPPED
    carded = resolve_generation(SHIPPED, GenerationChoice(), DEFAULT_MODEL_CARD_SAMPLING)
    assert (carded.temperature, carded.top_p, carded.top_k) == (0.6, 0.9, 20), "the checkpoint's own win"
    bare = resolve_generation(GenerationDefaults(eos_token_ids=(2,)), GenerationChoice(), DEFAULT_MODEL_CARD_SAMPLING)
    assert (bare.temperature, bare.top_p, bare.eos_token_ids) == (0.2, 0.9, (2,))


def test_vllm_drops_every_default_and_overrides_win(tmp_path: Path) -> None:
    neutral = resolve_generation(SHIPPED, GenerationChoice("vllm"), DEFAULT_MODEL_CARD_SAMPLING)
    assert neutral == GenerationDefaults(eos_token_ids=(2,))
    overrides = parse_overrides('{"temperature": 0.7, "top_k": 40}')
    mixed = resolve_generation(SHIPPED, GenerationChoice("auto", overrides), None)
    assert (mixed.temperature, mixed.top_k) == (0.7, 40) and isinstance(mixed.top_k, int)
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_p": 0.8, "do_sample": True}))
    folder = resolve_generation(SHIPPED, GenerationChoice(str(tmp_path)), None)
    assert (folder.temperature, folder.top_p, folder.top_k) == (None, 0.8, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{temperature: 1}", "not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"min_tokens": 3}', "'min_tokens' is not one ember applies"),
        ('{"temperature": "hot"}', "temperature must be a finite number"),
        ('{"top_p": true}', "top_p must be a finite number"),
    ],
)
def test_a_bad_override_names_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides(text)


def test_a_source_that_is_neither_a_mode_nor_a_config_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="auto, vllm or a folder holding generation_config.json"):
        GenerationChoice(str(tmp_path))


def test_the_embedded_model_is_recognised_by_its_file_only(tmp_path: Path) -> None:
    assert is_default_gguf(default_gguf_path())
    assert not is_default_gguf(str(tmp_path / "other.gguf"))
