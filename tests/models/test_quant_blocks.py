"""GGML block dequantizers against the gguf package's numpy reference, and the packed weight / linear API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, quants

from ember.models.default_model import default_gguf_path
from ember.models.quant.ggml_blocks import BLOCK_FORMATS, block_format
from ember.models.quant.packed_linear import PackedLinear, dequantize_matmul
from ember.models.quant.packed_weight import PackedWeight

QUANTIZABLE = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
)  # gguf.quants.quantize supports them
# K-quant super-blocks and the IQ4 types, which gguf cannot quantize: the byte offsets of their fp16 scales.
K_SCALE_OFFSETS = {
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
}


def _reference(raw: np.ndarray, qtype: str) -> np.ndarray:
    return quants.dequantize(raw, GGMLQuantizationType[qtype])


def _random_quantized(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """uint8 [rows, bytes_per_row]: real quantization where gguf supports it, else random bytes with finite,
    moderate fp16 scales written at the format's scale offsets."""
    rng = np.random.default_rng(seed)
    gtype = GGMLQuantizationType[qtype]
    if qtype in QUANTIZABLE:
        values = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3.0, (rows, 1))).astype(np.float32)
        return np.ascontiguousarray(quants.quantize(values, gtype)).view(np.uint8).reshape(rows, -1)
    block_size, type_size = GGML_QUANT_SIZES[gtype]
    blocks = rng.integers(0, 256, (rows * cols // block_size, type_size), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[qtype]:
        scales = (rng.standard_normal(blocks.shape[0]) * 0.05).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("qtype", list(BLOCK_FORMATS))
def test_dequantize_matches_gguf_reference_on_random_blocks(qtype: str) -> None:
    rows, cols = 48, 512
    raw = _random_quantized(qtype, rows, cols, seed=list(BLOCK_FORMATS).index(qtype))
    weight = PackedWeight(qtype, (rows, cols), torch.from_numpy(raw.copy()))
    ours = weight.dequantize()
    assert ours.dtype == torch.float32 and ours.shape == (rows, cols)
    np.testing.assert_array_equal(ours.numpy(), _reference(raw, qtype))


def test_every_listed_format_agrees_with_gguf_sizes() -> None:
    for name, fmt in BLOCK_FORMATS.items():
        assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[GGMLQuantizationType[name]], name


@pytest.fixture(scope="module")
def default_tensors() -> dict[str, object]:
    reader = GGUFReader(default_gguf_path())
    wanted = {"token_embd.weight", "output_norm.weight"} | {
        t.name for t in reader.tensors if t.name.startswith("blk.0.")
    }
    return {t.name: t for t in reader.tensors if t.name in wanted}


def test_dequantize_matches_gguf_reference_on_default_model_tensors(
    default_tensors: dict[str, object],
) -> None:
    seen = set()
    for name, tensor in default_tensors.items():
        qtype = tensor.tensor_type.name  # type: ignore[attr-defined]
        raw = np.asarray(tensor.data).view(np.uint8)  # type: ignore[attr-defined]
        cols = int(tensor.shape[0])  # type: ignore[attr-defined]  # ne0 = in_features
        raw = raw.reshape(-1, block_format(qtype).bytes_per_row(cols))
        weight = PackedWeight(qtype, (raw.shape[0], cols), torch.from_numpy(raw.copy()))
        expected = _reference(raw, qtype).reshape(raw.shape[0], cols)
        np.testing.assert_array_equal(weight.dequantize().numpy(), expected, err_msg=name)
        seen.add(qtype)
    assert seen == {"Q8_0", "Q4_1", "F32"}


def _packed(qtype: str, rows: int, cols: int, seed: int) -> PackedWeight:
    return PackedWeight(
        qtype, (rows, cols), torch.from_numpy(_random_quantized(qtype, rows, cols, seed).copy())
    )


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q4_K", "Q6_K"])
def test_packed_linear_equals_dequantize_then_fp32_matmul(qtype: str) -> None:
    weight = _packed(qtype, 40, 256, seed=1)
    bias = torch.randn(40)
    x = torch.randn(3, 5, 256)  # [B, T, in]
    layer = PackedLinear(weight, bias)
    expected = torch.matmul(x, weight.dequantize().t()) + bias
    assert torch.equal(layer(x), expected)
    assert torch.equal(PackedLinear(weight, None)(x), torch.matmul(x, weight.dequantize().t()))
    assert "weight_data" in layer.state_dict()


def test_packed_linear_uses_the_matmul_chosen_at_construction() -> None:
    weight = _packed("Q8_0", 8, 64, seed=2)
    calls: list[tuple[int, ...]] = []

    def counting_matmul(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return dequantize_matmul(x, w)

    layer = PackedLinear(weight, None, matmul_fn=counting_matmul)
    x = torch.randn(4, 64)
    assert torch.equal(layer(x), x @ weight.dequantize().t())
    assert calls == [(4, 64)]


def test_packed_linear_rejects_wrong_shapes() -> None:
    weight = _packed("Q8_0", 8, 64, seed=3)
    with pytest.raises(ValueError, match="bias shape"):
        PackedLinear(weight, torch.zeros(7))
    with pytest.raises(ValueError, match="last dim 64"):
        PackedLinear(weight)(torch.randn(2, 32))


def test_concat_rows_stacks_output_features() -> None:
    q, k, v = (_packed("Q4_1", rows, 128, seed) for rows, seed in ((64, 4), (32, 5), (32, 6)))
    fused = PackedWeight.concat_rows([q, k, v])
    assert fused.shape == (128, 128) and fused.qtype == "Q4_1"
    assert fused.nbytes == q.nbytes + k.nbytes + v.nbytes
    assert torch.equal(fused.dequantize(), torch.cat([q.dequantize(), k.dequantize(), v.dequantize()]))


def test_concat_rows_rejects_mixed_types_and_widths() -> None:
    with pytest.raises(ValueError, match="one qtype"):
        PackedWeight.concat_rows([_packed("Q4_1", 8, 64, 7), _packed("Q8_0", 8, 64, 8)])
    with pytest.raises(ValueError, match="one qtype"):
        PackedWeight.concat_rows([_packed("Q4_1", 8, 64, 7), _packed("Q4_1", 8, 96, 8)])
    with pytest.raises(ValueError, match="at least one"):
        PackedWeight.concat_rows([])


def test_dequantize_rows_and_take_rows_select_rows() -> None:
    weight = _packed("Q8_0", 50, 96, seed=9)
    rows = torch.tensor([[3, 0], [49, 3]])
    full = weight.dequantize()
    assert torch.equal(weight.dequantize_rows(rows), full[rows.reshape(-1)])
    taken = weight.take_rows(torch.tensor([5, 1, 1]))
    assert taken.shape == (3, 96)
    assert torch.equal(taken.dequantize(), full[[5, 1, 1]])


def test_packed_weight_validates_its_data() -> None:
    with pytest.raises(ValueError, match="unsupported GGML tensor type 'IQ2_XXS'"):
        PackedWeight("IQ2_XXS", (4, 256), torch.zeros(4, 66, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not a multiple of the block size 32"):
        PackedWeight("Q8_0", (4, 40), torch.zeros(4, 34, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"needs uint8 data of shape \(4, 34\)"):
        PackedWeight("Q8_0", (4, 32), torch.zeros(4, 36, dtype=torch.uint8))
