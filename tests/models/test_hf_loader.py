"""load_hf_folder on folders written by transformers' save_pretrained: logits round-trip, errors name the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn

from ember.models.attention_metadata import AttentionMetadata
from ember.models.errors import ModelLoadError
from ember.models.hf_loader import load_hf_folder
from ember.models.llama import DecoderModel

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
PROMPTS = [[5, 17, 3, 250, 9, 9, 40], [1, 2], [7, 100, 299, 31, 4]]


def write_tokenizer(folder: Path) -> None:
    """A tiny byte-level BPE (the kind ember reads) trained in code, with ChatML special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=290,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(["hello world, hello ember", "the quick brown fox"] * 20, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def save_checkpoint(model: nn.Module, folder: Path, **save_kwargs: object) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **save_kwargs)
    write_tokenizer(folder)
    return folder


def logits_of(model: DecoderModel, prompts: list[list[int]]) -> torch.Tensor:
    ids = torch.tensor([t for p in prompts for t in p])
    positions = torch.cat([torch.arange(len(p)) for p in prompts])
    with torch.no_grad():
        hidden = model(
            ids, positions, AttentionMetadata.for_prefill_without_cache([len(p) for p in prompts]), None
        )
        return model.compute_logits(hidden)


def reference_logits(hf: nn.Module, prompts: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([hf(torch.tensor([p])).logits[0].float() for p in prompts])


def network_from(folder: Path) -> tuple[DecoderModel, object]:
    checkpoint = load_hf_folder(str(folder))
    model = DecoderModel(checkpoint.config)
    model.load_weights(checkpoint.weights)
    return model, checkpoint


@pytest.mark.parametrize("variant", ["llama_rope_llama3", "qwen2", "qwen3"])
def test_saved_model_round_trips(
    make_hf_model: Callable[..., nn.Module], tmp_path: Path, variant: str
) -> None:
    hf = make_hf_model(variant, seed=21)
    folder = save_checkpoint(hf, tmp_path)
    model, checkpoint = network_from(folder)
    assert checkpoint.source_format == "safetensors"
    assert checkpoint.source_path == str(folder)
    assert checkpoint.quantization == "f32"
    assert checkpoint.config.architecture == variant.split("_")[0]
    assert checkpoint.chat_template == CHAT_TEMPLATE
    assert checkpoint.tokenizer.decode(checkpoint.tokenizer.encode("hello world")) == "hello world"
    torch.testing.assert_close(logits_of(model, PROMPTS), reference_logits(hf, PROMPTS), rtol=1e-4, atol=1e-5)


def test_sharded_checkpoint_loads_every_shard(
    make_hf_model: Callable[..., nn.Module], tmp_path: Path
) -> None:
    hf = make_hf_model("llama", seed=22)
    folder = save_checkpoint(hf, tmp_path, max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model, _ = network_from(folder)
    torch.testing.assert_close(logits_of(model, PROMPTS), reference_logits(hf, PROMPTS), rtol=1e-4, atol=1e-5)


def test_bf16_checkpoint_is_served_in_fp32(make_hf_model: Callable[..., nn.Module], tmp_path: Path) -> None:
    hf = make_hf_model("llama_tied_mha", seed=23).to(torch.bfloat16)
    folder = save_checkpoint(hf, tmp_path)
    (folder / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [2, 7], "temperature": 0.6, "top_p": 0.9, "top_k": 20})
    )
    model, checkpoint = network_from(folder)
    assert checkpoint.quantization == "bf16"
    assert all(w.dtype == torch.float32 for w in checkpoint.weights.values())
    assert "lm_head.weight" not in checkpoint.weights  # tied: transformers does not save it
    assert checkpoint.generation.eos_token_ids == (2, 7)
    assert (checkpoint.generation.temperature, checkpoint.generation.top_p) == (0.6, 0.9)
    assert checkpoint.generation.top_k == 20 and checkpoint.generation.repetition_penalty is None
    # The reference: an fp32 transformers model holding the same bf16-rounded weights (not hf.float(), whose
    # rope inverse frequencies would stay rounded to bf16).
    reference = make_hf_model("llama_tied_mha", seed=0)
    reference.load_state_dict({name: t.float() for name, t in hf.state_dict().items()})
    expected = reference_logits(reference, PROMPTS)
    torch.testing.assert_close(logits_of(model, PROMPTS), expected, rtol=1e-4, atol=1e-5)


def test_chat_template_jinja_file_wins(make_hf_model: Callable[..., nn.Module], tmp_path: Path) -> None:
    folder = save_checkpoint(make_hf_model("qwen2", seed=24), tmp_path)
    (folder / "chat_template.jinja").write_text("{{ messages[0].content }}")
    assert load_hf_folder(str(folder)).chat_template == "{{ messages[0].content }}"


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="no such directory") as info:
        load_hf_folder(str(missing))
    assert str(info.value).startswith(str(missing))


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_hf_folder(str(tmp_path))


def test_corrupt_config(make_hf_model: Callable[..., nn.Module], tmp_path: Path) -> None:
    folder = save_checkpoint(make_hf_model("llama"), tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json: cannot read JSON"):
        load_hf_folder(str(folder))


def test_corrupt_safetensors(make_hf_model: Callable[..., nn.Module], tmp_path: Path) -> None:
    folder = save_checkpoint(make_hf_model("llama"), tmp_path)
    weights_file = folder / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: cannot read safetensors"):
        load_hf_folder(str(folder))


def test_missing_shard(make_hf_model: Callable[..., nn.Module], tmp_path: Path) -> None:
    folder = save_checkpoint(make_hf_model("llama"), tmp_path, max_shard_size="40KB")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match="listed in model.safetensors.index.json but missing"):
        load_hf_folder(str(folder))


def test_folder_without_safetensors(make_hf_model: Callable[..., nn.Module], tmp_path: Path) -> None:
    folder = save_checkpoint(make_hf_model("llama"), tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors files"):
        load_hf_folder(str(folder))


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_unsupported_architecture_names_the_supported_ones(
    make_hf_model: Callable[..., nn.Module], tmp_path: Path
) -> None:
    folder = save_checkpoint(make_hf_model("llama"), tmp_path)
    _edit_config(folder, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(
        ModelLoadError,
        match="unsupported architecture MistralForCausalLM; ember supports LlamaForCausalLM, "
        "Qwen2ForCausalLM, Qwen3ForCausalLM",
    ):
        load_hf_folder(str(folder))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn' is not supported"),
        ({"use_sliding_window": True}, "sliding-window attention"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"num_attention_heads": None}, "config.json lacks 'num_attention_heads'"),
    ],
)
def test_configs_ember_cannot_run_are_refused(
    make_hf_model: Callable[..., nn.Module], tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    folder = save_checkpoint(make_hf_model("llama"), tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(ModelLoadError, match=message):
        load_hf_folder(str(folder))
