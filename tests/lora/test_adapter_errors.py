"""Every way a PEFT folder or an in-memory adapter can be wrong, and the message that says so."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lora_helpers import random_adapter, small_config
from safetensors.torch import load_file, save_file

from ember.lora.adapter import (
    LoraAdapter,
    base_model_matches,
    load_peft_adapter,
    peft_key,
    save_peft_adapter,
)
from ember.lora.errors import LoraError

CONFIG = small_config()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A valid adapter folder (rank 4, all modules, base 'SmolLM2-135M-Instruct') to break in each test."""
    save_peft_adapter(
        random_adapter(CONFIG, "ok", seed=1), str(tmp_path), "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    return tmp_path


def edit_config(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def edit_tensors(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def load(folder: Path, **kwargs: object) -> LoraAdapter:
    return load_peft_adapter(str(folder), CONFIG, "under-test", **kwargs)  # type: ignore[arg-type]


def test_valid_folder_loads(folder: Path) -> None:
    adapter = load(folder)
    assert adapter.name == "under-test" and adapter.rank == 4 and len(adapter.weights) == 14


def test_missing_folder_and_files(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(LoraError, match="no such adapter folder"):
        load(tmp_path / "nope")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(LoraError, match="no adapter_model.safetensors.*adapter_model.bin is not read"):
        load(folder)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(LoraError, match="no adapter_config.json"):
        load(folder)


def test_unreadable_files(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(LoraError, match="not a readable safetensors file"):
        load(folder)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(LoraError, match="not valid JSON"):
        load(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("use_dora", True, "DoRA"),
        ("bias", "all", "bias='all'"),
        ("bias", "lora_only", "bias='lora_only'"),
        ("modules_to_save", ["lm_head"], "modules_to_save"),
        ("rank_pattern", {"q_proj": 8}, "per-module ranks"),
        ("alpha_pattern", {"q_proj": 8}, "per-module alphas"),
        ("fan_in_fan_out", True, "fan_in_fan_out"),
        ("lora_bias", True, "lora_bias"),
        ("peft_type", "IA3", "peft_type 'IA3' is not supported"),
        ("task_type", "SEQ_CLS", "task_type 'SEQ_CLS'"),
        ("r", 0, "r must be a positive integer"),
        ("lora_alpha", "big", "lora_alpha must be a positive number"),
        ("target_modules", ["q_proj", "embed_tokens"], "unsupported LoRA target module.*embed_tokens"),
        ("target_modules", 7, "target_modules must be a list"),
        ("layers_to_transform", "all", "layers_to_transform must be"),
    ],
)
def test_unsupported_or_invalid_config(folder: Path, key: str, value: object, message: str) -> None:
    edit_config(folder, lambda c: c.__setitem__(key, value))
    with pytest.raises(LoraError, match=message):
        load(folder)


def test_rank_in_config_must_match_the_tensors(folder: Path) -> None:
    edit_config(folder, lambda c: c.__setitem__("r", 8))
    with pytest.raises(LoraError, match="do not have rank 8"):
        load(folder)


def test_adapter_for_a_different_hidden_size(tmp_path: Path) -> None:
    wider = small_config(hidden_size=128, head_dim=32)
    save_peft_adapter(random_adapter(wider, "wide", seed=1), str(tmp_path), "other")
    with pytest.raises(
        LoraError,
        match="layer 0 down_proj.*projection 128x128 but the base model.s is 64x128.*different base model",
    ):
        load(tmp_path)


def test_adapter_for_a_deeper_model(tmp_path: Path) -> None:
    deeper = small_config(num_layers=4)
    save_peft_adapter(random_adapter(deeper, "deep", seed=1), str(tmp_path), "other")
    with pytest.raises(LoraError, match="layer 2 .*only 2 layers"):
        load(tmp_path)


def test_weights_for_modules_ember_does_not_have(folder: Path) -> None:
    edit_tensors(
        folder, lambda t: t.__setitem__("base_model.model.lm_head.lora_A.weight", torch.zeros(4, 64))
    )
    with pytest.raises(LoraError, match="unexpected tensor 'base_model.model.lm_head.lora_A.weight'"):
        load(folder)


def test_weights_for_an_unknown_projection(folder: Path) -> None:
    key = "base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"
    edit_tensors(folder, lambda t: t.__setitem__(key, torch.zeros(4, 64)))
    with pytest.raises(LoraError, match="targets 'qkv_proj'"):
        load(folder)


def test_weights_outside_target_modules(folder: Path) -> None:
    edit_config(folder, lambda c: c.__setitem__("target_modules", ["q_proj", "k_proj"]))
    with pytest.raises(LoraError, match="weights for v_proj, o_proj, gate_proj, up_proj, down_proj"):
        load(folder)


def test_lora_a_without_lora_b(folder: Path) -> None:
    edit_tensors(folder, lambda t: t.pop(peft_key(1, "up_proj", "B")))
    with pytest.raises(LoraError, match=r"layers\.1\.mlp\.up_proj\.lora_B\.weight is missing"):
        load(folder)


def test_empty_weight_file(folder: Path) -> None:
    save_file({}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(LoraError, match="holds no LoRA weights"):
        load(folder)


def test_base_model_name_mismatch_warns_by_default_and_fails_when_strict(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ember.lora.adapter"):
        load(folder, base_model_name="Qwen2.5-0.5B-Instruct")
    assert "trained on 'HuggingFaceTB/SmolLM2-135M-Instruct' but the served model is" in caplog.text
    with pytest.raises(LoraError, match="trained on 'HuggingFaceTB/SmolLM2-135M-Instruct'"):
        load(folder, base_model_name="Qwen2.5-0.5B-Instruct", strict_base_model=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ember.lora.adapter"):
        load(folder, base_model_name="SmolLM2-135M-Instruct.Q4_1.gguf", strict_base_model=True)
    assert caplog.text == ""


def test_base_model_names_that_denote_the_same_model() -> None:
    assert base_model_matches("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
    assert base_model_matches("/models/smollm2-135m-instruct/", "SmolLM2-135M-Instruct-Q8_0.gguf")
    assert not base_model_matches("SmolLM2-360M-Instruct", "SmolLM2-135M-Instruct")


def test_in_memory_adapter_validation() -> None:
    a, b = torch.zeros(4, 64), torch.zeros(64, 4)
    with pytest.raises(LoraError, match="non-empty name"):
        LoraAdapter("", 4, 8.0, ("q_proj",), {})
    with pytest.raises(LoraError, match="rank must be positive"):
        LoraAdapter("x", 0, 8.0, ("q_proj",), {})
    with pytest.raises(LoraError, match="alpha must be positive"):
        LoraAdapter("x", 4, 0.0, ("q_proj",), {})
    with pytest.raises(LoraError, match="unsupported LoRA target module.*'w1'"):
        LoraAdapter("x", 4, 8.0, ("w1",), {})
    with pytest.raises(LoraError, match="not in target_modules"):
        LoraAdapter("x", 4, 8.0, ("q_proj",), {(0, "k_proj"): (a, b)})
    with pytest.raises(LoraError, match="do not have rank 4"):
        LoraAdapter("x", 4, 8.0, ("q_proj",), {(0, "q_proj"): (a, torch.zeros(64, 2))})


def test_save_refuses_what_peft_could_not_load(tmp_path: Path) -> None:
    with pytest.raises(LoraError, match="no weights to save"):
        save_peft_adapter(LoraAdapter("x", 4, 8.0, ("q_proj",), {}), str(tmp_path), "base")
    ragged = random_adapter(CONFIG, "ragged", seed=1, modules=("q_proj", "v_proj"))
    del ragged.weights[(1, "v_proj")]
    with pytest.raises(LoraError, match="layer 1 lacks v_proj"):
        save_peft_adapter(ragged, str(tmp_path), "base")


def test_saved_subset_of_layers_round_trips(tmp_path: Path) -> None:
    adapter = random_adapter(CONFIG, "late", seed=2, modules=("o_proj",), layers=(1,), use_rslora=True)
    save_peft_adapter(adapter, str(tmp_path), "base")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    loaded = load(tmp_path)
    assert loaded.use_rslora and loaded.scaling == pytest.approx(adapter.scaling)
    assert set(loaded.weights) == {(1, "o_proj")}
    for key, (a, b) in adapter.weights.items():
        assert torch.equal(loaded.weights[key][0], a) and torch.equal(loaded.weights[key][1], b)
