"""load_gguf on the default model (against transformers' own GGUF loader) and on tiny GGUFs written here."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from gguf_helpers import HEAD_DIM, HEADS, TinyGGUFSpec, llama_cpp_permute, write_tiny_gguf

from ember.models.checkpoint import Checkpoint
from ember.models.config import RopeScaling
from ember.models.default_model import default_gguf_path
from ember.models.gguf_config import llama3_rope_divisors
from ember.models.gguf_loader import load_gguf, load_gguf_tokenizer
from ember.models.gguf_names import rope_unpermutation
from ember.models.quant.packed_weight import PackedWeight


@pytest.fixture(scope="module")
def fp32_checkpoint() -> Checkpoint:
    return load_gguf(default_gguf_path(), keep_packed=False)


@pytest.fixture(scope="module")
def packed_checkpoint() -> Checkpoint:
    return load_gguf(default_gguf_path(), keep_packed=True)


@pytest.fixture(scope="module")
def transformers_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """What transformers' GGUF loader produces (its reverse-permute included) for the default model."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder = tmp_path_factory.mktemp("gguf")
    os.symlink(default_gguf_path(), folder / "model.gguf")
    config = AutoConfig.from_pretrained(folder, gguf_file="model.gguf")
    with torch.device("meta"):  # only the parameter names are needed
        skeleton = AutoModelForCausalLM.from_config(config)
    return load_gguf_checkpoint(str(folder / "model.gguf"), return_tensors=True, model_to_load=skeleton)[
        "tensors"
    ]


def test_default_model_config(fp32_checkpoint: Checkpoint) -> None:
    config = fp32_checkpoint.config
    assert (config.architecture, config.num_layers, config.hidden_size, config.intermediate_size) == (
        "llama",
        30,
        576,
        1536,
    )
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (9, 3, 64, 49152)
    assert config.rope_theta == 100000.0 and config.rope_scaling is None
    assert config.max_position_embeddings == 8192
    assert config.rms_norm_eps == pytest.approx(1e-5)
    assert config.tie_word_embeddings and not config.attention_bias and not config.qk_norm
    assert (config.bos_token_id, config.eos_token_ids) == (1, (2,))
    assert fp32_checkpoint.quantization == "Q4_1"
    assert fp32_checkpoint.source_format == "gguf"
    assert fp32_checkpoint.generation.eos_token_ids == (2,)
    assert fp32_checkpoint.chat_template is not None and "<|im_start|>" in fp32_checkpoint.chat_template
    assert "lm_head.weight" not in fp32_checkpoint.weights  # tied: the embedding serves as lm_head


def test_fp32_weights_equal_transformers_gguf_loader(
    fp32_checkpoint: Checkpoint, transformers_weights: dict[str, torch.Tensor]
) -> None:
    assert set(fp32_checkpoint.weights) == set(transformers_weights)
    for name in transformers_weights:
        ours = fp32_checkpoint.weights[name]
        assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32, name
        assert torch.equal(ours, transformers_weights[name]), name
    q = fp32_checkpoint.weights["model.layers.7.self_attn.q_proj.weight"]
    assert q.shape == (576, 576)


def test_keep_packed_keeps_quantized_matrices_and_decodes_to_the_same_values(
    fp32_checkpoint: Checkpoint, packed_checkpoint: Checkpoint
) -> None:
    assert packed_checkpoint.config == fp32_checkpoint.config
    for name, dense in fp32_checkpoint.weights.items():
        packed = packed_checkpoint.weights[name]
        if name.endswith("norm.weight"):
            assert isinstance(packed, torch.Tensor) and packed.dtype == torch.float32, name
            assert torch.equal(packed, dense), name
            continue
        assert isinstance(packed, PackedWeight), name
        assert packed.qtype == ("Q8_0" if name == "model.embed_tokens.weight" else "Q4_1"), name
        assert packed.shape == tuple(dense.shape), name
        assert torch.equal(packed.dequantize(), dense), name


def test_rope_unpermutation_inverts_llama_cpp_permute() -> None:
    for heads in (1, 3, 9):
        hf_rows = np.random.default_rng(heads).standard_normal((heads * 64, 8)).astype(np.float32)
        stored = llama_cpp_permute(hf_rows, heads)
        restored = torch.from_numpy(stored)[rope_unpermutation(heads * 64, heads)]
        assert torch.equal(restored, torch.from_numpy(hf_rows))


@pytest.mark.parametrize(
    "spec",
    [
        TinyGGUFSpec(arch="llama", tied=True),
        TinyGGUFSpec(arch="llama", tied=False, qtype="Q4_0"),
        TinyGGUFSpec(arch="qwen2", bias=True, qtype="Q5_1"),
        TinyGGUFSpec(arch="qwen3", qk_norm=True, tied=False, qtype="Q4_1"),
    ],
    ids=["llama-tied", "llama-untied-q4_0", "qwen2-bias", "qwen3-qk-norm"],
)
def test_tiny_gguf_weights_come_back_in_hf_layout(tmp_path: os.PathLike[str], spec: TinyGGUFSpec) -> None:
    path = os.path.join(tmp_path, "tiny.gguf")
    expected = write_tiny_gguf(path, spec)
    for keep_packed in (False, True):
        checkpoint = load_gguf(path, keep_packed=keep_packed)
        assert set(checkpoint.weights) == set(expected)
        for name, values in expected.items():
            weight = checkpoint.weights[name]
            assert isinstance(weight, PackedWeight) == (keep_packed and values.ndim == 2), name
            dense = weight.dequantize() if isinstance(weight, PackedWeight) else weight
            assert torch.equal(dense, torch.from_numpy(values)), name
        config = checkpoint.config
        assert config.architecture == spec.arch
        assert config.tie_word_embeddings == spec.tied
        assert config.attention_bias == spec.bias and config.qk_norm == spec.qk_norm
        assert checkpoint.quantization == spec.qtype


def test_directory_with_one_gguf_loads_it(tmp_path: os.PathLike[str]) -> None:
    write_tiny_gguf(os.path.join(tmp_path, "only.gguf"), TinyGGUFSpec())
    checkpoint = load_gguf(str(tmp_path), keep_packed=False)
    assert checkpoint.source_path == os.path.join(tmp_path, "only.gguf")


def test_rope_scaling_from_metadata_and_rope_freqs(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "linear.gguf")
    write_tiny_gguf(
        path, TinyGGUFSpec(fields={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    )
    assert load_gguf(path, keep_packed=False).config.rope_scaling == RopeScaling(
        rope_type="linear", factor=4.0
    )

    llama3 = RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    divisors = llama3_rope_divisors(HEAD_DIM, 10000.0, llama3).numpy()
    assert (
        divisors.min() == 1.0 and divisors.max() == 8.0 and ((divisors > 1) & (divisors < 8)).any()
    )  # 3 bands
    path = os.path.join(tmp_path, "llama3.gguf")
    write_tiny_gguf(path, TinyGGUFSpec(rope_freqs=divisors))
    checkpoint = load_gguf(path, keep_packed=False)
    assert checkpoint.config.rope_scaling == llama3
    assert "rope_freqs.weight" not in checkpoint.weights


def test_llama3_divisors_match_transformers_inv_freq() -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    hf_config = LlamaConfig(
        hidden_size=HEAD_DIM * HEADS,
        num_attention_heads=HEADS,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    ours = plain / llama3_rope_divisors(HEAD_DIM, 500000.0, scaling)
    torch.testing.assert_close(ours.float(), inv_freq.float(), rtol=1e-5, atol=0)
    assert math.isclose(float(llama3_rope_divisors(HEAD_DIM, 500000.0, scaling).max()), 8.0)


def test_sampling_defaults_from_metadata(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "sampling.gguf")
    write_tiny_gguf(path, TinyGGUFSpec(fields={"general.sampling.temp": 0.6, "general.sampling.top_k": 20}))
    generation = load_gguf(path, keep_packed=False).generation
    assert (
        generation.temperature == pytest.approx(0.6) and generation.top_k == 20 and generation.top_p is None
    )


def test_load_gguf_tokenizer_reads_only_the_vocabulary() -> None:
    tokenizer, template = load_gguf_tokenizer(default_gguf_path())
    assert tokenizer.vocab_size == 49152 and tokenizer.eos_token == "<|im_end|>"
    assert template is not None and "add_generation_prompt" in template
