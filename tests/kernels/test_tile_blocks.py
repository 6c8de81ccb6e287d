"""A packed linear on the kernels holds its weight once, as tiles, where the tiles keep every raw byte (Q8_0,
Q4_0, Q4_1, Q5_0, Q5_1): the raw blocks come back byte for byte, and every path (kernel, reference, tied embedding) gives
the same numbers as before the raw blocks were let go of."""

from __future__ import annotations

import pytest
import torch
from random_blocks import random_blocks

from ember import kernels
from ember.kernels.tile_blocks import INVERTIBLE_QTYPES, raw_blocks_from_tiles
from ember.models.quant.packed_linear import PackedLinear, dequantize_matmul
from ember.models.quant.packed_weight import PackedWeight

pytestmark = pytest.mark.usefixtures("native_kernels")


@pytest.mark.parametrize("qtype", sorted(INVERTIBLE_QTYPES))
@pytest.mark.parametrize(("n", "k"), [(45, 96), (8, 32), (131, 896)])
def test_tiles_give_back_the_raw_blocks_byte_for_byte(qtype: str, n: int, k: int) -> None:
    raw = random_blocks(qtype, n, k, seed=n + k)
    prepared = kernels.prepare_weight(raw, qtype, n, k)
    assert prepared.interleaved
    assert torch.equal(raw_blocks_from_tiles(prepared.data, qtype, n, k), raw)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_formats_whose_tiles_lose_raw_bytes_keep_them(qtype: str) -> None:
    raw = random_blocks(qtype, 21, 256, seed=3)
    layer = PackedLinear(PackedWeight(qtype, (21, 256), raw))
    assert layer.use_fast_kernel()
    assert layer.weight_data is raw
    with pytest.raises(ValueError, match="do not keep the raw blocks"):
        raw_blocks_from_tiles(layer.prepared.data, qtype, 21, 256)  # type: ignore[union-attr]


@pytest.mark.parametrize("qtype", sorted(INVERTIBLE_QTYPES))
def test_a_linear_on_the_kernel_lets_its_raw_blocks_go_and_computes_the_same(qtype: str) -> None:
    n, k = 45, 96
    raw = random_blocks(qtype, n, k, seed=11)
    bias = torch.randn(n)
    x = torch.randn(3, 2, k)
    twin = PackedLinear(PackedWeight(qtype, (n, k), raw.clone()), bias)
    assert twin.use_fast_kernel()
    layer = PackedLinear(PackedWeight(qtype, (n, k), raw), bias)
    assert layer.use_fast_kernel()
    assert layer.weight_data is None and "weight_data" not in layer.state_dict()
    assert torch.equal(layer.weight.data, raw)  # rebuilt on demand, byte for byte
    assert torch.equal(layer(x), twin(x))
    reference = dequantize_matmul(x, PackedWeight(qtype, (n, k), raw)) + bias
    torch.testing.assert_close(layer(x), reference, rtol=2e-2, atol=2e-2)  # int8 activations
    assert layer.use_fast_kernel()  # preparing again reads the rebuilt blocks
    assert torch.equal(layer(x), twin(x))
