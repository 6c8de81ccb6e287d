"""A model on the int8 kernels holds each Q8_0 / Q4_0 / Q4_1 linear once, as the kernels' tiles, not also as
its raw blocks: the numbers it computes are bit for bit those of a model that keeps both (the kernel reads the
same tiles; the module path's raw blocks come back byte for byte), the tied embedding keeps its own blocks, and
the load hands its freed temporaries back to the OS. On a tiny model built here and on the default GGUF."""

from __future__ import annotations

import pytest
import torch

from ember.engine.testing import random_weights, tiny_config
from ember.models.attention_metadata import AttentionMetadata
from ember.models.llama import DecoderModel
from ember.models.loader import LoadConfig, enable_quant_kernels, load_model
from ember.models.quant import packed_linear
from ember.models.quant.packed_linear import PackedLinear
from ember.models.quant.packed_weight import PackedWeight
from ember.models.quant.quantize import quantize_rows

pytestmark = pytest.mark.usefixtures("native_kernels")

QTYPES = {"q_proj": "Q8_0", "k_proj": "Q8_0", "v_proj": "Q8_0", "o_proj": "Q4_0"}
QTYPES |= {"gate_proj": "Q4_0", "up_proj": "Q8_0", "down_proj": "Q4_K", "embed_tokens": "Q8_0"}


def logits(model: DecoderModel, prompts: list[list[int]]) -> torch.Tensor:
    ids = torch.tensor([t for p in prompts for t in p])
    positions = torch.cat([torch.arange(len(p)) for p in prompts])
    attn = AttentionMetadata.for_prefill_without_cache([len(p) for p in prompts])
    with torch.no_grad():
        return model.compute_logits(model(ids, positions, attn, None))


def tiny_packed_model() -> DecoderModel:
    config = tiny_config(
        "llama", intermediate_size=256
    )  # down_proj's rows fit Q4_K's 256 values; tied: lm_head multiplies with the embedding's Q8_0 blocks
    assert config.tie_word_embeddings
    weights: dict[str, torch.Tensor | PackedWeight] = {}
    for name, tensor in random_weights(config, seed=3).items():
        qtype = QTYPES.get(name.split(".")[-2])
        weights[name] = (
            tensor if qtype is None else PackedWeight(qtype, tensor.shape, quantize_rows(tensor, qtype))
        )
    model = DecoderModel(config)
    model.load_weights(weights)
    return model.eval()


def held_bytes(model: torch.nn.Module) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.buffers()}
    for m in model.modules():
        if isinstance(m, PackedLinear) and m.prepared is not None:
            storages[m.prepared.data.untyped_storage().data_ptr()] = (
                m.prepared.data.untyped_storage().nbytes()
            )
    return sum(storages.values())


def both_ways(make: object, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model as loaded now, and as it was when every linear kept its raw blocks beside its tiles."""
    ours = make()  # type: ignore[operator]
    with monkeypatch.context() as patch:
        patch.setattr(packed_linear, "INVERTIBLE_QTYPES", frozenset())
        both = make()  # type: ignore[operator]
    return ours, both


def test_a_tiny_model_computes_the_same_bits_holding_its_weights_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make() -> DecoderModel:
        model = tiny_packed_model()
        assert enable_quant_kernels(model) > 0
        return model

    ours, both = both_ways(make, monkeypatch)
    prompts = [[5, 99, 1024, 7], [3], list(range(40, 57))]
    assert torch.equal(logits(ours, prompts), logits(both, prompts))
    ids = torch.tensor([0, 17, 49151])
    assert torch.equal(ours.embed_tokens(ids), both.embed_tokens(ids))
    assert ours.lm_head.weight_data is None  # the tiles alone
    assert ours.embed_tokens.packed_data is not None  # the embedding still reads its rows from the blocks
    for name, module in ours.named_modules():
        if isinstance(module, PackedLinear):
            kept = both.get_submodule(name)
            assert torch.equal(module.weight.data, kept.weight.data), name
            assert (module.weight_data is None) == (module.qtype != "Q4_K"), name  # Q4_K tiles lose bytes
    assert held_bytes(ours) < held_bytes(both)


def test_the_default_model_computes_the_same_bits_holding_its_weights_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make() -> DecoderModel:
        return load_model(LoadConfig()).network  # type: ignore[return-value]

    ours, both = both_ways(make, monkeypatch)
    prompts = [[1, 504, 3458, 28, 9016], [2, 17]]
    assert torch.equal(logits(ours, prompts), logits(both, prompts))
    dropped = [m for m in ours.modules() if isinstance(m, PackedLinear) and m.weight_data is None]
    assert dropped and ours.lm_head in dropped  # Q4_1 layers and the tied Q8_0 output matrix
    assert held_bytes(ours) < 0.7 * held_bytes(both)  # 121 MiB, was 184: the tied Q8_0 blocks stay
