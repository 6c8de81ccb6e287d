"""DecoderModel against transformers on tiny random models: logits, gradients, weight validation, packed weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ember.models.attention_metadata import AttentionMetadata
from ember.models.config import RopeScaling
from ember.models.linear import ConcatLinear, make_linear
from ember.models.llama import DecoderModel
from ember.models.rotary import RotaryEmbedding

# The variants tests/models/conftest.py builds; TinyModel is its (hf, config, ours) bundle.
VARIANTS = [
    "llama",
    "llama_attention_bias",
    "llama_rope_linear",
    "llama_rope_llama3",
    "llama_tied_mha",
    "qwen2",
    "qwen3",
]
TinyModel = Any
PROMPT_LENS = [1, 6, 13, 19]


def random_prompts(lens: list[int], vocab: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lens]


def run_flat(model: DecoderModel, prompts: list[list[int]]) -> torch.Tensor:
    """All prompts as one flattened batch without a KV cache -> logits [sum(lens), vocab]."""
    ids = torch.tensor([t for p in prompts for t in p])
    positions = torch.cat([torch.arange(len(p)) for p in prompts])
    attn = AttentionMetadata.for_prefill_without_cache([len(p) for p in prompts])
    return model.compute_logits(model(ids, positions, attn, None))


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_logits_match_transformers(tiny_model: Callable[[str], TinyModel], variant: str) -> None:
    tiny = tiny_model(variant)
    prompts = random_prompts(PROMPT_LENS, tiny.config.vocab_size)
    with torch.no_grad():
        ours = run_flat(tiny.ours, prompts)
    expected = torch.cat([tiny.hf_logits(p) for p in prompts])
    assert ours.dtype == torch.float32
    assert ours.shape == (sum(PROMPT_LENS), tiny.config.vocab_size)
    assert expected.std() > 0.3  # the weights are random enough for the comparison to mean something
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_positions_beyond_the_cached_rope_table(tiny_model: Callable[[str], TinyModel]) -> None:
    tiny = tiny_model("llama_rope_llama3")
    prompt = random_prompts([9], tiny.config.vocab_size)[0]
    offset = 5000  # past max_position_embeddings (256), so the cos/sin table must grow
    ids = torch.tensor(prompt)
    positions = torch.arange(offset, offset + len(prompt))
    with torch.no_grad():
        hidden = tiny.ours(ids, positions, AttentionMetadata.for_prefill_without_cache([len(prompt)]), None)
    torch.testing.assert_close(
        tiny.ours.compute_logits(hidden), tiny.hf_logits(prompt, position_offset=offset), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("variant", ["llama", "qwen3"])
def test_gradients_match_transformers(tiny_model: Callable[[str], TinyModel], variant: str) -> None:
    """Training runs autograd through forward without a KV cache; the fused projections' gradients are the
    concatenation of the reference's per-projection gradients."""
    tiny = tiny_model(variant)
    prompts = random_prompts([5, 11], tiny.config.vocab_size, seed=3)
    targets = random_prompts([5, 11], tiny.config.vocab_size, seed=4)

    ours_loss = nn.functional.cross_entropy(
        run_flat(tiny.ours, prompts), torch.tensor(sum(targets, [])), reduction="sum"
    )
    ours_loss.backward()
    tiny.hf.zero_grad()
    hf_loss = sum(
        nn.functional.cross_entropy(tiny.hf(torch.tensor([p])).logits[0], torch.tensor(t), reduction="sum")
        for p, t in zip(prompts, targets, strict=True)
    )
    hf_loss.backward()
    try:
        torch.testing.assert_close(ours_loss, hf_loss, rtol=1e-5, atol=1e-5)
        hf_attn = tiny.hf.model.layers[1].self_attn
        hf_qkv_grad = torch.cat(
            [hf_attn.q_proj.weight.grad, hf_attn.k_proj.weight.grad, hf_attn.v_proj.weight.grad]
        )
        ours_layer = tiny.ours.layers[1]
        torch.testing.assert_close(
            ours_layer.self_attn.qkv_proj.weight.grad, hf_qkv_grad, rtol=1e-4, atol=1e-5
        )
        hf_mlp = tiny.hf.model.layers[0].mlp
        torch.testing.assert_close(
            tiny.ours.layers[0].mlp.gate_up_proj.weight.grad,
            torch.cat([hf_mlp.gate_proj.weight.grad, hf_mlp.up_proj.weight.grad]),
            rtol=1e-4,
            atol=1e-5,
        )
        torch.testing.assert_close(
            tiny.ours.embed_tokens.weight.grad, tiny.hf.model.embed_tokens.weight.grad, rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            tiny.ours.norm.weight.grad, tiny.hf.model.norm.weight.grad, rtol=1e-4, atol=1e-5
        )
    finally:
        tiny.ours.zero_grad(set_to_none=True)
        tiny.hf.zero_grad(set_to_none=True)


def test_tied_lm_head_is_the_embedding_parameter(tiny_model: Callable[[str], TinyModel]) -> None:
    tiny = tiny_model("llama_tied_mha")
    assert tiny.ours.lm_head.weight is tiny.ours.embed_tokens.weight
    assert (
        sum(1 for _ in tiny.ours.parameters()) == len(list(tiny.ours.state_dict())) - 1
    )  # one shared tensor


def test_untied_model_without_lm_head_uses_the_embedding(make_hf_model: Callable[..., nn.Module]) -> None:
    hf = make_hf_model("llama", seed=5)
    weights = {n: t for n, t in hf.state_dict().items() if n != "lm_head.weight"}
    from ember.models.hf_loader import model_config_from_hf

    model = DecoderModel(model_config_from_hf(hf.config.to_dict(), "<llama>"))
    model.load_weights(weights)
    hidden = torch.randn(3, 64)
    torch.testing.assert_close(
        model.compute_logits(hidden), hidden @ hf.model.embed_tokens.weight.detach().t()
    )


def _state_dict(tiny: TinyModel) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in tiny.hf.state_dict().items()}


def test_missing_weight_is_named(tiny_model: Callable[[str], TinyModel]) -> None:
    tiny = tiny_model("llama")
    weights = _state_dict(tiny)
    del weights["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing weights: model\.layers\.1\.mlp\.up_proj\.weight"):
        DecoderModel(tiny.config).load_weights(weights)


def test_unexpected_weight_is_named(tiny_model: Callable[[str], TinyModel]) -> None:
    tiny = tiny_model("llama")
    weights = _state_dict(tiny)
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)  # old checkpoints: ignored
    with pytest.raises(ValueError, match=r"unexpected weights: model\.layers\.0\.self_attn\.q_proj\.bias$"):
        DecoderModel(tiny.config).load_weights(weights)


def test_wrongly_shaped_weight_is_named(tiny_model: Callable[[str], TinyModel]) -> None:
    tiny = tiny_model("qwen3")
    weights = _state_dict(tiny)
    weights["model.layers.0.self_attn.k_norm.weight"] = torch.ones(16)
    with pytest.raises(
        ValueError, match=r"model\.layers\.0\.self_attn\.k_norm\.weight has shape \(16,\), expected \(32,\)"
    ):
        DecoderModel(tiny.config).load_weights(weights)


def test_forward_before_load_weights_is_refused(tiny_model: Callable[[str], TinyModel]) -> None:
    model = DecoderModel(tiny_model("llama").config)
    with pytest.raises(RuntimeError, match="load_weights"):
        model(torch.tensor([1]), torch.tensor([0]), AttentionMetadata.for_prefill_without_cache([1]), None)


def test_unsupported_rope_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported rope scaling type 'yarn'"):
        RotaryEmbedding(16, 128, 10000.0, RopeScaling(rope_type="yarn", factor=4.0))


def test_make_linear_fuses_dense_weights_with_bias() -> None:
    weights = [torch.randn(5, 8), torch.randn(3, 8)]
    biases = [torch.randn(5), torch.randn(3)]
    fused = make_linear(weights, biases)
    assert isinstance(fused, nn.Linear) and fused.out_features == 8
    x = torch.randn(4, 8)
    expected = torch.cat([x @ w.t() + b for w, b in zip(weights, biases, strict=True)], dim=-1)
    torch.testing.assert_close(fused(x), expected)


def test_make_linear_rejects_mismatched_parts() -> None:
    with pytest.raises(ValueError, match="share in_features"):
        make_linear([torch.randn(4, 8), torch.randn(4, 6)], None)
    with pytest.raises(ValueError, match="2 weights but 1 biases"):
        make_linear([torch.randn(4, 8), torch.randn(4, 8)], [torch.randn(4)])


def _pack(weight: torch.Tensor, qtype: str):  # -> PackedWeight
    import gguf.quants
    from gguf import GGMLQuantizationType

    from ember.models.quant.packed_weight import PackedWeight

    blocks = gguf.quants.quantize(weight.detach().numpy().astype(np.float32), GGMLQuantizationType[qtype])
    return PackedWeight(qtype, tuple(weight.shape), torch.from_numpy(np.ascontiguousarray(blocks)))


def test_packed_weights_match_their_dequantized_fp32_model(tiny_model: Callable[[str], TinyModel]) -> None:
    """GGUF-style mixed formats: q/k Q8_0 with v Q4_0 (runs split), gate|up Q4_1, packed tied embedding."""
    from ember.models.quant.packed_linear import PackedLinear

    tiny = tiny_model("llama_tied_mha")
    qtypes = {"q_proj": "Q8_0", "k_proj": "Q8_0", "v_proj": "Q4_0", "o_proj": "Q8_0"}
    qtypes |= {"gate_proj": "Q4_1", "up_proj": "Q4_1", "down_proj": "Q5_0", "embed_tokens": "Q8_0"}
    packed: dict = {}
    for name, tensor in tiny.hf.state_dict().items():
        if name == "lm_head.weight":
            continue
        kind = name.split(".")[-2]
        packed[name] = _pack(tensor, qtypes[kind]) if kind in qtypes else tensor.clone()
    dequantized = {n: w if isinstance(w, torch.Tensor) else w.dequantize() for n, w in packed.items()}

    packed_model = DecoderModel(tiny.config)
    packed_model.load_weights(packed)
    fp32_model = DecoderModel(tiny.config)
    fp32_model.load_weights(dequantized)

    attn = packed_model.layers[0].self_attn
    assert isinstance(attn.qkv_proj, ConcatLinear)
    assert [p.qtype for p in attn.qkv_proj.parts] == ["Q8_0", "Q4_0"]
    assert isinstance(packed_model.layers[0].mlp.gate_up_proj, PackedLinear)
    assert isinstance(packed_model.lm_head, PackedLinear)
    assert packed_model.lm_head.weight_data.data_ptr() == packed_model.embed_tokens.packed_data.data_ptr()

    prompts = random_prompts([4, 9], tiny.config.vocab_size, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(
            run_flat(packed_model, prompts), run_flat(fp32_model, prompts), rtol=1e-4, atol=1e-4
        )
