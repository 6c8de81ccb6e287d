"""ember's LoRA forward against PEFT + transformers, in both directions of the PEFT folder format."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from lora_helpers import (
    ember_logits,
    ember_model,
    hf_logits,
    hf_model,
    prompts,
    random_adapter,
    small_config,
)
from transformers import Qwen2Config, Qwen2ForCausalLM

from ember.lora.adapter import load_peft_adapter, save_peft_adapter
from ember.lora.layers import LoraContext
from ember.lora.targets import TARGET_MODULES
from ember.models.hf_loader import model_config_from_hf
from ember.models.llama import DecoderModel

LENS = [9, 4]


def test_ember_saved_adapter_gives_the_same_logits_in_peft(tmp_path: Path) -> None:
    config = small_config()
    model = ember_model(config)
    adapter = random_adapter(config, "saved", seed=11, rank=4, alpha=16.0)
    save_peft_adapter(adapter, str(tmp_path), base_model_name="tiny-llama")

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (
        saved["r"] == 4 and saved["lora_alpha"] == 16.0 and saved["base_model_name_or_path"] == "tiny-llama"
    )
    peft_model = peft.PeftModel.from_pretrained(hf_model(config), str(tmp_path)).eval()

    batch = prompts(LENS, config.vocab_size)
    with torch.no_grad():
        ours = ember_logits(model, batch, LoraContext.for_batch([(adapter, n) for n in LENS]))
        base = ember_logits(model, batch, None)
    expected = torch.cat([hf_logits(peft_model, p) for p in batch])
    assert (
        ours - base
    ).abs().max() > 1.0  # the adapter changes the logits a lot, so equality means something
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("modules", "use_rslora", "layers"),
    [
        (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False, None),
        (["v_proj", "down_proj"], True, [1]),
        ("all-linear", False, None),  # PEFT's shorthand (not a module list): the weight file says which
        (r".*\.(k_proj|up_proj)", False, None),  # a regex, matched by PEFT against full module names
    ],
)
def test_peft_saved_adapter_gives_the_same_logits_in_ember(
    tmp_path: Path, modules: list[str] | str, use_rslora: bool, layers: list[int] | None
) -> None:
    config = small_config()
    model = ember_model(config)
    lora_config = peft.LoraConfig(
        r=8,
        lora_alpha=24,
        lora_dropout=0.0,
        target_modules=modules,
        use_rslora=use_rslora,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    peft_model = peft.get_peft_model(hf_model(config), lora_config).eval()
    _randomize_lora_b(peft_model, seed=5)
    peft_model.save_pretrained(str(tmp_path))

    adapter = load_peft_adapter(str(tmp_path), config, "from-peft")
    named = {"all-linear": TARGET_MODULES, r".*\.(k_proj|up_proj)": ("k_proj", "up_proj")}
    assert adapter.rank == 8
    assert adapter.target_modules == (named[modules] if isinstance(modules, str) else tuple(modules))
    expected_layers = set(layers) if layers is not None else {0, 1}
    assert {layer for layer, _ in adapter.weights} == expected_layers
    assert adapter.scaling == pytest.approx(24 / (8**0.5 if use_rslora else 8))

    batch = prompts(LENS, config.vocab_size, seed=2)
    with torch.no_grad():
        ours = ember_logits(model, batch, LoraContext.for_batch([(adapter, n) for n in LENS]))
    expected = torch.cat([hf_logits(peft_model, p) for p in batch])
    assert (ours - ember_logits(model, batch, None)).abs().max() > 0.1
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_qwen2_adapter_on_biased_qkv_matches_peft(tmp_path: Path) -> None:
    """Qwen2 has q/k/v biases in the base projection; the LoRA delta adds on top of them."""
    hf_config = Qwen2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    hf_config._attn_implementation = "eager"
    hf = Qwen2ForCausalLM(hf_config).eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        for name, param in hf.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.15 * noise)
    config = model_config_from_hf(hf.config.to_dict(), "<qwen2>")
    model = DecoderModel(config)
    model.load_weights({name: t.detach().clone() for name, t in hf.state_dict().items()})
    model.eval()

    lora_config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "up_proj"], task_type="CAUSAL_LM"
    )
    peft_model = peft.get_peft_model(hf, lora_config).eval()
    _randomize_lora_b(peft_model, seed=9)
    peft_model.save_pretrained(str(tmp_path))
    adapter = load_peft_adapter(str(tmp_path), config, "qwen-adapter")

    batch = prompts([7], config.vocab_size, seed=4)
    with torch.no_grad():
        ours = ember_logits(model, batch, LoraContext.for_batch([(adapter, 7)]))
        base = ember_logits(model, batch, None)
    assert (ours - base).abs().max() > 1.0  # the adapter changes the logits, so equality means something
    torch.testing.assert_close(ours, hf_logits(peft_model, batch[0]), rtol=1e-4, atol=1e-4)


def _randomize_lora_b(peft_model: torch.nn.Module, seed: int) -> None:
    """PEFT starts B at zero (a no-op adapter); random B makes the comparison meaningful."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
